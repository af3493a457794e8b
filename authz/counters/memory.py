"""A single-process counter store: a dict of buckets, each holding its current window.

Atomicity: `reserve` and `release` never await, so within one asyncio event loop each runs
to completion before any other coroutine touches the store. The store is not thread-safe;
use it from one event loop.

Memory stays bounded by the buckets of live windows: every `sweep_interval` seconds (of the
`now` passed to `reserve`) buckets whose window has ended are dropped, and so are
outstanding reservations, which are kept by `Reservation.token` (at most `max_outstanding`,
oldest dropped first) only so that `release` can tell a reservation it issued, and has not
yet given back, from any other. `release` gives back what the store recorded under the token,
not what the reservation object claims; releasing an unknown, forgotten or already released
token is a no-op, which errs on the side of the limit. A call that takes nothing (no claims,
or every cost 0) gets an empty token. This store never raises `CounterStoreUnavailable`.
"""

from __future__ import annotations

import math
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from authz.counters.base import Bucket, bucket_of
from authz.counters.windows import retry_after, window_start
from authz.model import Claim, Exhausted, Reservation

__all__ = ["MAX_OUTSTANDING", "MemoryCounterStore"]

MAX_OUTSTANDING: Final = 20_000
"""Reservations kept for `release`, oldest dropped first: about 5 MiB. Envoy gives quota
back when the upstream fails a call, so a record must outlive that call; at 1,700 allowed
calls a second (one process's ceiling, bench/README.md) this covers the last ~12 s, at 100 a
second over 3 minutes. A release after the record was dropped is a no-op: the quota stays
spent, which errs on the side of the limit."""


class MemoryCounterStore:
    """`CounterStore` in process memory: for one sidecar replica, tests and the demo."""

    def __init__(
        self, *, sweep_interval: float = 60.0, max_outstanding: int = MAX_OUTSTANDING
    ) -> None:
        self._sweep_interval = sweep_interval
        self._max_outstanding = max_outstanding
        self._counts: dict[Bucket, tuple[int, int]] = {}  # bucket -> (window start, count)
        self._keys: dict[Bucket, Bucket] = {}
        """One bucket tuple per bucket, shared by every outstanding record that names it."""
        # token -> (expires at, bucket 1, start 1, cost 1, bucket 2, ...): one flat tuple per
        # record (about 270 bytes with its token, against ~540 for nested tuples). Ordered,
        # oldest first: dropping the oldest is O(1) (a plain dict's first live entry is found
        # by scanning past every entry deleted before it)
        self._outstanding: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._next_sweep = -math.inf

    async def reserve(self, claims: Sequence[Claim], now: float) -> Reservation | Exhausted:
        """Take every claim in the window containing `now`, or none (see `CounterStore`)."""
        if now >= self._next_sweep:
            self.sweep(now)
        if not claims:
            return Reservation()
        buckets = [bucket_of(claim) for claim in claims]
        costs: dict[Bucket, int] = {}
        for bucket, claim in zip(buckets, claims, strict=True):
            if costs.get(bucket, -1) < claim.cost:
                costs[bucket] = claim.cost
        counts = self._counts
        current: dict[Bucket, tuple[int, int]] = {}
        for bucket in costs:
            start = window_start(now, bucket[3])
            stored = counts.get(bucket)
            # a stored newer window (clock skew) wins
            current[bucket] = (start, 0) if stored is None or stored[0] < start else stored
        for bucket, claim in zip(buckets, claims, strict=True):
            if current[bucket][1] + costs[bucket] > claim.max:
                return Exhausted(claim=claim, retry_after=retry_after(now, claim.window_seconds))
        entries = []
        taken = False
        for bucket, cost in costs.items():
            start, count = current[bucket]
            counts[bucket] = (start, count + cost)
            entries.append((bucket, start, cost))
            taken = taken or cost > 0
        if not taken:
            return Reservation(entries=tuple(entries))  # nothing taken: nothing to give back
        reservation = Reservation(entries=tuple(entries), token=secrets.token_hex(16))
        self._track(reservation)
        return reservation

    async def release(self, reservation: Reservation) -> None:
        """Give back a reservation this store issued, once; never below zero."""
        tracked = self._outstanding.pop(reservation.token, None) if reservation.token else None
        if tracked is None:
            return
        for i in range(1, len(tracked), 3):
            bucket, start, cost = tracked[i], tracked[i + 1], tracked[i + 2]
            stored = self._counts.get(bucket)
            if stored is not None and stored[0] == start:
                self._counts[bucket] = (start, max(0, stored[1] - cost))

    async def close(self) -> None:
        self._counts.clear()
        self._keys.clear()
        self._outstanding.clear()

    def describe(self) -> str:
        return f"memory ({len(self._counts)} buckets)"

    def count(self, bucket: Bucket, now: float) -> int:
        """The bucket's count in the window containing `now` (for tests and debugging)."""
        return self._current(bucket, now)[1]

    @property
    def bucket_count(self) -> int:
        """How many buckets are held (live or not yet swept)."""
        return len(self._counts)

    def sweep(self, now: float) -> None:
        """Drop buckets and outstanding reservations whose window has ended."""
        self._counts = {
            bucket: (start, count)
            for bucket, (start, count) in self._counts.items()
            if start + bucket[3] > now
        }
        self._outstanding = OrderedDict(
            (token, record) for token, record in self._outstanding.items() if record[0] > now
        )
        self._keys = {bucket: bucket for bucket in self._counts}
        self._next_sweep = now + self._sweep_interval

    def _current(self, bucket: Bucket, now: float) -> tuple[int, int]:
        """(window start, count) for `now`; a stored newer window (clock skew) wins."""
        start = window_start(now, bucket[3])
        stored = self._counts.get(bucket)
        if stored is None or stored[0] < start:
            return start, 0
        return stored

    def _track(self, reservation: Reservation) -> None:
        expires = max(start + bucket[3] for bucket, start, _ in reservation.entries)
        record: list[Any] = [expires]
        for bucket, start, cost in reservation.entries:
            record += (self._keys.setdefault(bucket, bucket), start, cost)
        self._outstanding[reservation.token] = tuple(record)
        while len(self._outstanding) > self._max_outstanding:
            self._outstanding.popitem(last=False)
