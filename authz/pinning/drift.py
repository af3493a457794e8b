"""Drift: tool definitions the upstream lists that differ from the lock.

`DriftWatch` is the sidecar's memory of what it has seen. The response phase shows it
every `tools/list` element (`observe`); the request phase reads a snapshot (`view`, a
`PinView`) and denies calls of the tools that drifted (`authz.engine`, rule `(pin)`).

- A drifted tool stays drifted until the lock changes (a new `tools.lock.json` loaded):
  an upstream that shows a changed definition to one session and the pinned one to the
  next does not get its tool back by flipping (listed as pinned again, it is still
  observed `changed`, not reported again, and still denied).
- Each distinct drift (tool, pinned hash, listed hash) is reported once (`Observation.new`),
  so the audit event and the metric count changes, not listings. The memory is bounded
  (`MAX_REMEMBERED`); past it, drifts are still enforced but may be reported again.
- The memory is per sidecar process. `mcp-authz pin --check` (cron, CI) is the fleet-wide
  check.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from authz.pinning.lock import ToolLock, definition_hash

__all__ = ["MAX_REMEMBERED", "DriftWatch", "Observation", "PinView"]

MAX_REMEMBERED: Final = 10_000
"""Distinct drifts remembered for reporting once (tool names come from the upstream)."""

Status = Literal["pinned", "changed", "unpinned"]


@dataclass(frozen=True, slots=True)
class PinView:
    """What the request phase knows: the lock, and the tools seen drifted (name → the
    hash of the definition listed)."""

    lock: ToolLock
    drifted: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Observation:
    """One listed tool compared with the lock."""

    name: str
    status: Status
    pinned: str | None
    """The lock's hash (None: the tool is not in the lock)."""
    listed: str
    new: bool = False
    """The first time this drift is seen (report it)."""

    @property
    def drifted(self) -> bool:
        return self.status != "pinned"


class DriftWatch:
    """The lock in force and the drifts seen since it was loaded (thread-safe)."""

    def __init__(self, lock: ToolLock | None = None) -> None:
        self._lock = threading.Lock()
        self._tool_lock = lock
        self._drifted: dict[str, str] = {}
        self._reported: set[tuple[str, str | None, str]] = set()
        self._view: PinView | None = PinView(lock) if lock is not None else None

    @property
    def lock(self) -> ToolLock | None:
        return self._tool_lock

    def view(self) -> PinView | None:
        """The current snapshot (None: no lock)."""
        return self._view

    def sync(self, lock: ToolLock | None) -> PinView | None:
        """The current snapshot, after taking `lock` (the configuration's, now) into
        account: a different lock starts over. Cheap when nothing changed."""
        if lock is not self._tool_lock:
            self.reset(lock)
        return self._view

    def reset(self, lock: ToolLock | None) -> None:
        """A lock was loaded (or removed): start over when it differs from the one in force."""
        with self._lock:
            if (
                lock is not None
                and self._tool_lock is not None
                and (lock.content_hash == self._tool_lock.content_hash)
            ):
                # the same lock, loaded again (another file changed): keep what was seen,
                # under the new object (so `sync` is cheap again)
                self._tool_lock = lock
                self._view = PinView(lock, MappingProxyType(dict(self._drifted)))
                return
            self._tool_lock = lock
            self._drifted = {}
            self._reported = set()
            self._view = PinView(lock) if lock is not None else None

    def observe(self, element: Mapping[str, Any]) -> Observation | None:
        """Compare one `tools/list` element with the lock (None: no lock, or no name)."""
        lock = self._tool_lock
        name = element.get("name")
        if lock is None or not isinstance(name, str):
            return None
        listed = definition_hash(element)
        pinned = lock.get(name)
        if pinned is not None and pinned.sha256 == listed:
            view = self._view
            if view is None or name not in view.drifted:
                return Observation(name, "pinned", pinned.sha256, listed)
            # listed as pinned again after a drift: still drifted (reported already)
            return Observation(name, "changed", pinned.sha256, listed)
        status: Status = "unpinned" if pinned is None else "changed"
        old = pinned.sha256 if pinned is not None else None
        key = (name, old, listed)
        with self._lock:
            if lock is not self._tool_lock:  # reloaded meanwhile: judged by the new lock
                return self.observe(element)
            new = key not in self._reported
            if new and len(self._reported) < MAX_REMEMBERED:
                self._reported.add(key)
            if pinned is not None and self._drifted.get(name) != listed:
                self._drifted[name] = listed
                self._view = PinView(lock, MappingProxyType(dict(self._drifted)))
        return Observation(name, status, old, listed, new=new)
