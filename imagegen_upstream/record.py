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
    """Appends `{"tool", "time", "arg_keys", "protocol_version"}` lines, flushed per line."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def record(self, tool: str, arg_keys: Iterable[str], protocol_version: str | None) -> None:
        if self.path is None:
            return
        line = json.dumps(
            {
                "tool": tool,
                "time": time.time(),
                "arg_keys": sorted(arg_keys),
                "protocol_version": protocol_version,
            },
            separators=(",", ":"),
        )
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
