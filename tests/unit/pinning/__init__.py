"""Tool definitions for the pinning tests, as real MCP servers list them: the four ImageGen
tools (`imagegen_upstream.server.build_server`) and the drift probe's tools
(`tests.e2e.drift_upstream.build_server`), both built in-process (no socket) and rendered as
`tools/list` elements, and a lock of them."""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from authz.pinning import ToolLock, load_lock, lock_document, render_lock
from imagegen_upstream.server import build_server as imagegen_server
from imagegen_upstream.settings import from_env
from tests.e2e.drift_upstream import build_server as probe_server

__all__ = ["imagegen_tools", "lock_bytes", "lock_of", "probe_tools", "tools_by_name"]


def _elements(tools: Iterable[Any]) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


@functools.cache
def _imagegen() -> tuple[dict[str, Any], ...]:
    with tempfile.TemporaryDirectory() as outputs:
        server = imagegen_server(from_env({}, outputs=Path(outputs)))
        return tuple(_elements(asyncio.run(server.list_tools())))


@functools.cache
def _probes() -> tuple[dict[str, Any], ...]:
    server, _admin = probe_server(Path(os.devnull))
    return tuple(_elements(asyncio.run(server.list_tools())))


def imagegen_tools() -> list[dict[str, Any]]:
    """The ImageGen upstream's `tools/list` elements (fresh copies)."""
    return copy.deepcopy(list(_imagegen()))


def probe_tools() -> list[dict[str, Any]]:
    """probe.read, probe.write(amount, flag, tags, opts) and probe.delete (fresh copies)."""
    return copy.deepcopy(list(_probes()))


def tools_by_name(elements: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(e["name"]): dict(e) for e in elements}


def lock_bytes(elements: Iterable[Mapping[str, Any]]) -> bytes:
    """The lock file `mcp-authz pin` writes for these elements."""
    return render_lock(lock_document(elements)).encode("utf-8")


def lock_of(elements: Iterable[Mapping[str, Any]]) -> ToolLock:
    return load_lock(lock_bytes(elements))
