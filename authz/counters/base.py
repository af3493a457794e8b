"""The counter store interface: the engine's claims in, a reservation (or a refusal) out.

Semantics every implementation keeps:
- `reserve` is all-or-nothing across its claims, in the window that contains `now`.
- Claims of one call that name the same `bucket` count the call once (the largest cost of
  those claims) and must each fit their own `max`, i.e. the strictest max wins.
- A bucket fits when `count + cost <= max`. If any claim does not fit, nothing is taken and
  `Exhausted` names the first such claim (in claim order) and the seconds to its window end.
- `release` gives a reservation back: idempotent, never below zero, and only while the
  bucket is still in the reserved window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

from authz.model import Claim, Exhausted, Reservation

__all__ = ["Bucket", "CounterStore", "bucket_of"]

Bucket = tuple[str, str, str, int]
"""(counter, scope, sharers, window seconds), the names encoded so that different callers
never share one by accident: see `Claim.bucket`."""

_BUCKETS_KEPT: Final = 4096
_buckets: dict[Claim, Bucket] = {}


def bucket_of(claim: Claim) -> Bucket:
    """`claim.bucket`, remembered for equal claims: the engine makes new but equal claims
    for every call, and encoding a bucket's names (JSON) costs several microseconds. At most
    `_BUCKETS_KEPT` are kept (all forgotten at once past it: session buckets come and go)."""
    bucket = _buckets.get(claim)
    if bucket is None:
        if len(_buckets) >= _BUCKETS_KEPT:
            _buckets.clear()
        bucket = _buckets[claim] = claim.bucket
    return bucket


@runtime_checkable
class CounterStore(Protocol):
    """Where limits are counted; the engine never knows which implementation it has."""

    async def reserve(self, claims: Sequence[Claim], now: float) -> Reservation | Exhausted:
        """Take every claim at once, or none; `now` is epoch seconds (UTC)."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (e.g. the upstream call failed); idempotent."""
        ...

    async def close(self) -> None:
        """Release resources; the store is not used afterwards."""
        ...

    def describe(self) -> str:
        """One line for readiness and logs, e.g. `memory (12 buckets)`."""
        ...


class CounterStoreUnavailable(Exception):
    """The store could not answer (down, slow, erroring); the caller must fail closed.

    A shared store (e.g. Redis) raises it from `reserve` and `release`, with the client's
    error as `__cause__`. The memory store never raises it.
    """


__all__ += ["CounterStoreUnavailable"]
