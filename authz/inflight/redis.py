"""In-flight ids in Redis: every replica sees every session's ids.

One key per entry, `<prefix>:{c}:i:<key>` (the key is already a digest), holding the owner,
created with `SET NX PX` (the TTL runs on the Redis server's clock) and deleted by a Lua
script only when the owner matches. The entries carry the counter store's hash tag `{c}`,
so on a Redis Cluster they live on the counters' shard: a tool call that takes quota
registers its id in the counters' reservation script (`claim_reserving`, one round trip,
see `authz.counters.redis` `reserve_holding`). Every failure is raised as
`InflightStoreUnavailable` (see `authz.redis_scripts.ScriptStore`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from authz.counters.base import CounterStore, CounterStoreUnavailable
from authz.counters.redis import HASH_TAG, RedisCounterStore
from authz.inflight.base import INFLIGHT_TTL_SECONDS, InflightStoreUnavailable, claim_then_reserve
from authz.model import Claim, Exhausted, Reservation
from authz.redis_scripts import DEFAULT_PREFIX, DEFAULT_TIMEOUT, ScriptStore

__all__ = ["RedisInflightStore"]

CLAIM_LUA: Final = """
-- KEYS[1]: the entry; ARGV[1]: owner; ARGV[2]: TTL in ms. Reply: 1 registered, 0 taken.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

RELEASE_LUA: Final = """
-- KEYS[1]: the entry; ARGV[1]: owner. Deletes it only for its owner.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_KEY = re.compile(r"[0-9a-f]{64}")


class RedisInflightStore(ScriptStore):
    """`InflightStore` in Redis (standalone or cluster)."""

    hash_tag = HASH_TAG
    unavailable = InflightStoreUnavailable

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        url: str | None = None,
        owns_client: bool = True,
        ttl: float = INFLIGHT_TTL_SECONDS,
    ) -> None:
        super().__init__(client, prefix=prefix, timeout=timeout, url=url, owns_client=owns_client)
        if not ttl > 0:
            raise ValueError("ttl must be positive")
        self._ttl_ms = max(1, round(ttl * 1000))
        self._claim = client.register_script(CLAIM_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def _key(self, key: str) -> str:
        if _KEY.fullmatch(key) is None:
            raise ValueError("not an in-flight key")
        return f"{self._base}i:{key}"

    async def claim(self, key: str, owner: str, now: float) -> bool:
        reply = await self._script(self._claim, [self._key(key)], [owner, self._ttl_ms])
        return int(reply) == 1

    async def release(self, key: str, owner: str) -> None:
        await self._script(self._release, [self._key(key)], [owner])

    async def claim_reserving(
        self, key: str, owner: str, now: float, counters: CounterStore, claims: Sequence[Claim]
    ) -> Reservation | Exhausted | None:
        """One script when `counters` is a Redis counter store on this store's client (the
        entry is taken in its reservation script); otherwise `claim_then_reserve`."""
        if not (isinstance(counters, RedisCounterStore) and counters.client is self._client):
            return await claim_then_reserve(self, key, owner, now, counters, claims)
        entry = self._key(key)
        try:
            return await counters.reserve_holding(claims, entry, owner, self._ttl_ms)
        except CounterStoreUnavailable as exc:  # one script: nothing is known to be held
            raise InflightStoreUnavailable(str(exc)) from exc

    def describe(self) -> str:
        return f"{super().describe()} (in flight)"
