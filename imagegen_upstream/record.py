"""Execution record: one JSON line per tool execution that actually started.

Security tests read it to prove that a call denied by the sidecar never reached us.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path


class ExecutionRecorder:
    """Appends one JSON line per execution, flushed per line.

    Fields: tool, time, arg_keys, protocol_version, grant (the `x-mcp-grant` header the
    gateway set, if any) and authorization_present (whether an Authorization header
    reached the upstream; behind the gateway it must be false).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def record(
        self,
        tool: str,
        arg_keys: Iterable[str],
        protocol_version: str | None,
        *,
        grant: str | None = None,
        authorization_present: bool = False,
    ) -> None:
        if self.path is None:
            return
        line = json.dumps(
            {
                "tool": tool,
                "time": time.time(),
                "arg_keys": sorted(arg_keys),
                "protocol_version": protocol_version,
                "grant": grant,
                "authorization_present": authorization_present,
            },
            separators=(",", ":"),
        )
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
