"""In-flight ids in process memory: for one sidecar replica, tests and the demo.

Atomic within one event loop (no method awaits before it is done). Memory is bounded: at
most `max_entries` entries, expired ones dropped first, then the oldest. Dropping a live
entry early only weakens the collision check for that id (see `authz.inflight.base`), never
a limit or a listing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from authz.counters.base import CounterStore
from authz.inflight.base import INFLIGHT_TTL_SECONDS, claim_then_reserve
from authz.model import Claim, Exhausted, Reservation

__all__ = ["MAX_ENTRIES", "MemoryInflightStore"]

MAX_ENTRIES: Final = 100_000
"""About 25 MB at most; entries normally live as long as one request."""


class MemoryInflightStore:
    """`InflightStore` in process memory."""

    def __init__(
        self, *, ttl: float = INFLIGHT_TTL_SECONDS, max_entries: int = MAX_ENTRIES
    ) -> None:
        if not ttl > 0 or max_entries < 1:
            raise ValueError("ttl and max_entries must be positive")
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[str, float]] = {}  # key -> (owner, expires at)

    def __len__(self) -> int:
        return len(self._entries)

    async def claim(self, key: str, owner: str, now: float) -> bool:
        held = self._entries.get(key)
        if held is not None:
            if held[1] > now:
                return False
            del self._entries[key]  # expired: re-inserted below, at the end of the order
        self._entries[key] = (owner, now + self._ttl)
        self._bound(now)
        return True

    async def release(self, key: str, owner: str) -> None:
        held = self._entries.get(key)
        if held is not None and held[0] == owner:
            del self._entries[key]

    async def claim_reserving(
        self, key: str, owner: str, now: float, counters: CounterStore, claims: Sequence[Claim]
    ) -> Reservation | Exhausted | None:
        return await claim_then_reserve(self, key, owner, now, counters, claims)

    async def close(self) -> None:
        self._entries.clear()

    def describe(self) -> str:
        return f"memory ({len(self._entries)} in flight)"

    def _bound(self, now: float) -> None:
        """Drop expired entries from the front (insertion order is expiry order: one TTL),
        then the oldest while over the bound."""
        entries = self._entries
        while entries:
            key, (_owner, expires) = next(iter(entries.items()))
            if expires > now and len(entries) <= self._max:
                return
            del entries[key]
