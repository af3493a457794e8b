"""Which JSON-RPC ids are in flight in an MCP session.

The MCP SDK's handshake-era transport keeps one response stream per request, keyed by
`str(id)` within the session: a request with id `7` and another with id `"7"`, in flight at
once, share one entry, so one answer reaches the wrong request or is lost. The request phase
therefore refuses a request whose id collides, compared as the SDK compares them, with a
request of the same session still in flight (-32600), and the response phase frees the id
when that request's response ends.

- A request is registered when ext_authz allows it and it carries an id and an
  `Mcp-Session-Id`. Requests without a session (the 2026-07-28 era, and the handshake era's
  stateless mode) are not: the SDK serves each such POST on its own, with no shared table.
- The key is `inflight_key(session, id)`: a digest, so neither the session id nor the request
  id is stored, logged or put in Envoy's metadata in the clear. The grant is not part of it:
  two grants that use one session share the upstream's table too.
- Each entry names its owner (the decision id) and is deleted only by that owner, so a late
  release can never free a newer request's entry.
- Each entry expires after `INFLIGHT_TTL_SECONDS`, so a release that never comes (the
  response phase unreachable, a client gone before the response started, a sidecar restart)
  cannot block an id for ever; clients never reuse an id within a session anyway.

A tool call that takes quota registers its id and reserves the quota in one step
(`claim_reserving`): the id in use → nothing is reserved; quota exhausted → the id is not
kept. The Redis store does both in one script (one round trip, `authz.counters.redis`
`reserve_holding`) when the counters are in the same Redis; otherwise it is the two steps
of `claim_then_reserve`.

Implementations: `memory.py` (one process) and `redis.py` (shared by every replica, since
Envoy may send two requests of one session to different replicas). A store that cannot
answer raises `InflightStoreUnavailable`; the request phase fails closed on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

import structlog

from authz.counters.base import CounterStore
from authz.model import Claim, Exhausted, Reservation

__all__ = [
    "INFLIGHT_TTL_SECONDS",
    "InflightStore",
    "InflightStoreUnavailable",
    "claim_then_reserve",
    "inflight_key",
]

log = structlog.get_logger("mcp_authz.inflight")

INFLIGHT_TTL_SECONDS: Final = 600
"""How long an id stays registered without a release. The registry is one layer among three
(give-back needs Envoy's or the upstream's evidence, and every answer to a grant that hides
tools is filtered whatever its id), so an entry that expires while its request still runs
only lets a colliding id through to an upstream that can then lose an answer; it cannot give
quota back or show a hidden tool."""


def inflight_key(session_id: str, rpc_id: str | int) -> str:
    """The registry key of a request: equal exactly when the SDK would mix the two requests
    up (same session, same `str(id)`: `7` and `"7"` collide)."""
    text = json.dumps([session_id, str(rpc_id)], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class InflightStoreUnavailable(Exception):
    """The store could not answer (down, slow, erroring); the caller must fail closed."""


@runtime_checkable
class InflightStore(Protocol):
    """Where in-flight ids are registered; the pipeline never knows which implementation."""

    async def claim(self, key: str, owner: str, now: float) -> bool:
        """Register `key` for `owner` unless a live entry holds it; True when registered.
        `now` is epoch seconds (the Redis store uses its server's clock instead)."""
        ...

    async def release(self, key: str, owner: str) -> None:
        """Delete the entry of `key` if `owner` holds it; anything else is a no-op."""
        ...

    async def claim_reserving(
        self, key: str, owner: str, now: float, counters: CounterStore, claims: Sequence[Claim]
    ) -> Reservation | Exhausted | None:
        """`claim` and `counters.reserve(claims, now)` as one step.

        None: a live entry holds `key`, and nothing is reserved. `Exhausted`: the counters
        refused, and `key` is not kept. `Reservation`: `key` is registered for `owner` and
        the quota taken. Raises `InflightStoreUnavailable` when the id could not be claimed
        (as `claim`: nothing is known to be held); any other exception is the counter
        store's, raised after `key` was registered (the caller keeps or releases it).
        """
        ...

    async def close(self) -> None:
        """Release resources; the store is not used afterwards."""
        ...

    def describe(self) -> str:
        """One line for readiness and logs."""
        ...


async def claim_then_reserve(
    store: InflightStore,
    key: str,
    owner: str,
    now: float,
    counters: CounterStore,
    claims: Sequence[Claim],
) -> Reservation | Exhausted | None:
    """`InflightStore.claim_reserving` in two steps: `claim`, then `counters.reserve`, and
    `release` when the counters refuse (a failed release is logged: the entry expires)."""
    try:
        claimed = await store.claim(key, owner, now)
    except InflightStoreUnavailable:
        raise
    except Exception as exc:
        raise InflightStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    if not claimed:
        return None
    result = await counters.reserve(claims, now)
    if isinstance(result, Exhausted):
        try:
            await store.release(key, owner)
        except Exception as exc:  # the entry expires on its own
            log.warning("inflight_release_failed", error=type(exc).__name__)
    return result
