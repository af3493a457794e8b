"""A counter store in Redis: several sidecar replicas share exact quotas.

Semantics are those of `CounterStore` (see `authz.counters.base`), with one difference:
**windows follow the Redis server's clock.** The scripts read `TIME` on the server and
compute each window start there; the `now` passed to `reserve` is ignored, so replicas with
skewed clocks can never split a window. `Reservation.entries` records the server's window
starts, and `retry_after` counts (rounded up, at least 1) to the end of the bucket's window on
the server's clock.

Atomicity: one `reserve` is ONE Lua script (EVALSHA via `register_script`): it reads every
bucket of the call, checks every claim, and then either takes every cost or nothing. There
is no read-then-write race between replicas. `release` is a second script.
`reserve_holding` is the same script with one more key to take (the in-flight registry's
entry of the call, `authz.inflight.redis`): refused when that key exists, set only when the
reservation is made, so registering the id and taking the quota cost one round trip.

Key layout (`P` is the prefix, default `mcp-authz`; `{c}` is the hash tag, see below):

    P:{c}:b:<window s>:<scope>:<counter>:<sharers>   hash {w: window start, c: count}
    P:{c}:r:<token>                                  hash {<bucket key>: "<start>:<cost>"}
    P:{c}:i:<in-flight key>                          the in-flight registry (authz.inflight.redis)
    P:{c}:health                                     never written; `ping` reads it

`<counter>` and `<sharers>` are the parts of `Claim.bucket`: JSON arrays of the policy and
the counter (`["imagegen","images"]`; an Intercept `state` counter adds its tool:
`["imagegen","create_charge","daily_spend"]`), and of who shares the bucket (`["team"]`,
`["team","ci"]` for grant `team` in session `ci`, `[]` for a global one). A JSON array tells
its parts apart, so different tuples never make the same key: grant `team/ci` without a
session is `["team/ci"]`. Every component is then percent-encoded (UTF-8, every byte outside
`A-Z a-z 0-9 _ . - ~ [ ] " ,`), so no name can add a `:`, a brace or whitespace to a key:
every key keeps its slot. For example, a session limit `per_session` of policy `p`:

    mcp-authz:{c}:b:86400:session:["p","per_session"]:["team","ci"]
    mcp-authz:{c}:b:86400:session:["p","per_session"]:["team%2Fci"]

A bucket key expires (PEXPIREAT) at its window's end plus `EXPIRE_MARGIN_MS`, and is reset by
the next reserve if it still holds an older window. A reservation record holds what the call
took, expires with the latest of its windows, and is deleted by the first `release`:

- `release` gives back, for each bucket key the caller names that the record also names,
  the recorded cost, only while the bucket still holds the recorded window, never below 0;
  then deletes the record. Unknown, expired or already released tokens are a no-op. A
  forged `Reservation` can therefore never give back more than was taken.
- Cost: any integer >= 0. A bucket fits when `count + cost <= max`, so a cost-0 claim fits
  unless the bucket is already above `max` (only after a policy lowered it mid-window);
  buckets whose cost is 0 are never written, and a call that takes nothing gets no record and
  an empty token. Counts are exact up to 2**53.

**Redis Cluster.** A script may only touch keys of one slot, and one call mixes scopes
(grant, session and global buckets). Every key of a prefix therefore carries the same hash
tag `{c}`: all counters of a deployment live on ONE shard (which may have replicas for
failover). That is provably atomic, but it does not spread counter load over shards: the
limit is one primary's throughput (tens of thousands of scripts per second), well above
what the sidecars in front of one MCP service send. The alternative, if it ever matters:
tag grant and session buckets by grant (`{g:<grant>}`, a session key embeds its grant) and
global buckets by counter, and make a call that spans tags a two-phase reservation (take
on each shard in a fixed order with the same token, give back the taken ones on the first
refusal). That never admits over a limit, but a refused call can briefly hold quota and
make a concurrent call fail spuriously, so it is not exact under contention.

Failure: every operation has a deadline (`timeout`, default 0.25 s), `from_url` sets the
same socket connect/read timeouts and disables client retries (a retried reserve could
take twice). Any Redis error, timeout or refused connection is raised as
`CounterStoreUnavailable`; the caller fails closed. A reserve that timed out may still have
been applied on the server: that quota is lost until the window ends, which errs on the
side of the limit. Scripts are reloaded transparently after a Redis restart (NOSCRIPT).
Redis replication is asynchronous: after a failover to a replica, or a restart without
persistence, counts not yet replicated are lost and their windows admit that much again.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from authz.counters.base import Bucket, CounterStoreUnavailable, bucket_of
from authz.model import Claim, Exhausted, Reservation
from authz.redis_scripts import DEFAULT_PREFIX, DEFAULT_TIMEOUT, ScriptStore

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "EXPIRE_MARGIN_MS",
    "HASH_TAG",
    "RedisCounterStore",
]

EXPIRE_MARGIN_MS: Final = 1000
"""Keys outlive their window by this much (ms); a stale key is reset before use anyway."""
HASH_TAG: Final = "{c}"
"""The hash tag of every key: the counters (and the in-flight registry) on one shard."""

_TOKEN = re.compile(r"[0-9a-f]{32}")
_KEYS_KEPT: Final = 4096

_FMT = "local function fmt(x) return string.format('%.0f', x) end\n"

_RESERVE_FN = """
-- numbers(text): the comma-separated numbers of `text` (one argument instead of many).
local function numbers(text)
  local out = {}
  for n in string.gmatch(text, '[^,]+') do out[#out + 1] = tonumber(n) end
  return out
end
-- reserve(keys, argv): keys[1] the reservation record, keys[1 + i] distinct bucket i
-- (i = 1..n); argv: margin ms, n, then (window seconds, cost) per bucket, then m, then
-- (bucket index, max) per claim in claim order.
-- Reply: {1, start_1, ..., start_n} or {0, index of the first exhausted claim, retry after}.
local function reserve(keys, argv)
  local time = redis.call('TIME')
  local sec, usec = tonumber(time[1]), tonumber(time[2])
  local margin = tonumber(argv[1])
  local n = tonumber(argv[2])
  local windows, costs, starts, counts = {}, {}, {}, {}
  for i = 1, n do
    local window = tonumber(argv[1 + 2 * i])
    local start = sec - (sec % window)
    local count = 0
    local stored = redis.call('HMGET', keys[1 + i], 'w', 'c')
    local w = tonumber(stored[1])
    if w and w >= start then
      start = w  -- this window (or a newer one, if the server clock stepped back)
      count = tonumber(stored[2]) or 0
    end
    windows[i], costs[i], starts[i], counts[i] = window, tonumber(argv[2 + 2 * i]), start, count
  end
  local base = 3 + 2 * n
  for j = 1, tonumber(argv[base]) do
    local i = tonumber(argv[base + 2 * j - 1])
    if counts[i] + costs[i] > tonumber(argv[base + 2 * j]) then
      local retry = math.ceil(((starts[i] + windows[i] - sec) * 1000000 - usec) / 1000000)
      if retry < 1 then retry = 1 end
      return {0, j, retry}
    end
  end
  local reply, taken, last_end = {1}, {}, 0
  for i = 1, n do
    reply[1 + i] = starts[i]
    if costs[i] > 0 then
      local key, window_end = keys[1 + i], starts[i] + windows[i]
      redis.call('HSET', key, 'w', fmt(starts[i]), 'c', fmt(counts[i] + costs[i]))
      redis.call('PEXPIREAT', key, fmt(window_end * 1000 + margin))
      taken[#taken + 1] = key
      taken[#taken + 1] = fmt(starts[i]) .. ':' .. fmt(costs[i])
      if window_end > last_end then last_end = window_end end
    end
  end
  if #taken > 0 then
    redis.call('HSET', keys[1], unpack(taken))
    redis.call('PEXPIREAT', keys[1], fmt(last_end * 1000 + margin))
  end
  return reply
end
"""

RESERVE_LUA: Final = (
    _FMT
    + _RESERVE_FN
    + """
-- KEYS: reserve's keys; ARGV[1]: reserve's argv, comma-separated.
if redis.replicate_commands then redis.replicate_commands() end
return reserve(KEYS, numbers(ARGV[1]))
"""
)

HOLD_RESERVE_LUA: Final = (
    _FMT
    + _RESERVE_FN
    + """
-- KEYS[1]: the key to hold; KEYS[2..]: reserve's keys. ARGV[1]: the value to hold it with,
-- ARGV[2]: its TTL in ms; ARGV[3]: reserve's argv, comma-separated.
-- Reply: {2} when KEYS[1] exists (nothing is taken), else reserve's reply; KEYS[1] is set
-- only when the reservation is made.
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
local reply = reserve({unpack(KEYS, 2)}, numbers(ARGV[3]))
if reply[1] == 1 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return reply
"""
)

RELEASE_LUA: Final = (
    _FMT
    + """
-- KEYS[1]: the reservation record; KEYS[2..]: the bucket keys the caller says it took.
-- Gives back what the record says, for the named buckets still in the recorded window.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do
  local taken = redis.call('HGET', KEYS[1], KEYS[i])
  if taken then
    local sep = string.find(taken, ':', 1, true)
    local start, cost = string.sub(taken, 1, sep - 1), tonumber(string.sub(taken, sep + 1))
    local stored = redis.call('HMGET', KEYS[i], 'w', 'c')
    if stored[1] == start then
      local count = (tonumber(stored[2]) or 0) - cost
      if count < 0 then count = 0 end
      redis.call('HSET', KEYS[i], 'c', fmt(count))
    end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""
)

COUNT_LUA: Final = """
-- KEYS[1]: a bucket; ARGV[1]: its window seconds. Reply: its count in the current window.
local sec = tonumber(redis.call('TIME')[1])
local stored = redis.call('HMGET', KEYS[1], 'w', 'c')
local w = tonumber(stored[1])
if w and w >= sec - (sec % tonumber(ARGV[1])) then return tonumber(stored[2]) or 0 end
return 0
"""


def _component(text: str) -> str:
    """One key component: percent-encoded, so it holds no `:`, brace, `%` or whitespace
    (the brackets, quotes and commas of a JSON array stay readable)."""
    return quote(text, safe='[]",', errors="surrogatepass")


class RedisCounterStore(ScriptStore):
    """`CounterStore` in Redis (standalone or Cluster): exact quotas across replicas.

    The store owns `client` (`close` closes it) unless `owns_client` is False. `timeout`
    bounds every operation.
    """

    hash_tag = HASH_TAG
    unavailable = CounterStoreUnavailable

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        url: str | None = None,
        owns_client: bool = True,
    ) -> None:
        super().__init__(client, prefix=prefix, timeout=timeout, url=url, owns_client=owns_client)
        self._bucket_keys: dict[Bucket, str] = {}
        self._reserve = client.register_script(RESERVE_LUA)
        self._hold_reserve = client.register_script(HOLD_RESERVE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._count = client.register_script(COUNT_LUA)

    def bucket_key(self, bucket: Bucket) -> str:
        """The Redis key of a bucket: `<prefix>:{c}:b:<window>:<scope>:<counter>:<sharers>`,
        remembered (percent-encoding three names costs several microseconds; at most
        `_KEYS_KEPT` are kept, all forgotten at once past it)."""
        key = self._bucket_keys.get(bucket)
        if key is None:
            if len(self._bucket_keys) >= _KEYS_KEPT:
                self._bucket_keys.clear()
            counter, scope, sharers, window = bucket
            key = self._bucket_keys[bucket] = (
                f"{self._base}b:{int(window)}:{_component(scope)}:"
                f"{_component(counter)}:{_component(sharers)}"
            )
        return key

    def reservation_key(self, token: str) -> str:
        """The Redis key that records what the reservation `token` took."""
        return f"{self._base}r:{token}"

    async def reserve(self, claims: Sequence[Claim], now: float) -> Reservation | Exhausted:
        """Take every claim at once, or none, in the windows of the Redis server's clock.

        `now` is ignored: window starts and `retry_after` come from Redis `TIME`.
        Raises `CounterStoreUnavailable` when Redis cannot answer within the timeout.
        """
        if not claims:
            return Reservation()
        call = _ReserveCall(self, claims)
        return call.outcome(await self._script(self._reserve, call.keys, call.args))

    async def reserve_holding(
        self, claims: Sequence[Claim], key: str, value: str, ttl_ms: int
    ) -> Reservation | Exhausted | None:
        """`reserve`, and take the Redis key `key` (set to `value`, expiring after `ttl_ms`)
        in the same script, so in one round trip: None when `key` exists (nothing is taken);
        `Exhausted` leaves `key` alone; a `Reservation` (also for no claims) sets it.

        `key` must carry this store's hash tag (`{c}`), so that on a Redis Cluster it lives
        on the counters' shard. Raises `CounterStoreUnavailable` when Redis cannot answer
        within the timeout (whether anything was applied is then unknown).
        """
        if HASH_TAG not in key:
            raise ValueError("the held key must carry the counters' hash tag")
        call = _ReserveCall(self, claims)
        reply = await self._script(
            self._hold_reserve, [key, *call.keys], [value, ttl_ms, *call.args]
        )
        if isinstance(reply, list) and reply and int(reply[0]) == 2:
            return None
        if not claims:
            return Reservation()
        return call.outcome(reply)

    async def release(self, reservation: Reservation) -> None:
        """Give back what `reservation` took, once (see the module docstring).

        Raises `CounterStoreUnavailable` when Redis cannot answer within the timeout.
        """
        token = reservation.token
        if not _TOKEN.fullmatch(token):
            return  # nothing was taken, or not a token this store issues
        bucket_keys = dict.fromkeys(
            self.bucket_key(bucket) for bucket, _, cost in reservation.entries if cost > 0
        )
        await self._script(self._release, [self.reservation_key(token), *bucket_keys], [])

    async def count(self, bucket: Bucket) -> int:
        """The bucket's count in its current window on the server (tests, debugging)."""
        return int(await self._script(self._count, [self.bucket_key(bucket)], [bucket[3]]))


class _ReserveCall:
    """One reservation's script arguments (distinct buckets, the largest cost of each, every
    claim's bucket index and max) and how to read the script's reply."""

    __slots__ = ("args", "buckets", "claims", "costs", "describe", "keys", "token")

    def __init__(self, store: RedisCounterStore, claims: Sequence[Claim]) -> None:
        index: dict[Bucket, int] = {}
        costs: list[int] = []
        claim_args: list[int] = []
        for claim in claims:
            if claim.cost < 0:
                raise ValueError(f"claim cost must be >= 0, got {claim.cost} ({claim.rule})")
            if claim.window_seconds <= 0:
                raise ValueError(f"window must be positive, got {claim.window_seconds}")
            i = index.setdefault(bucket_of(claim), len(index))
            if i == len(costs):
                costs.append(claim.cost)
            else:
                costs[i] = max(costs[i], claim.cost)
            claim_args += [i + 1, claim.max]
        buckets = list(index)
        token = secrets.token_hex(16)
        args: list[int] = [EXPIRE_MARGIN_MS, len(buckets)]
        for bucket, cost in zip(buckets, costs, strict=True):
            args += [bucket[3], cost]
        args += [len(claims), *claim_args]
        self.claims = claims
        self.buckets = buckets
        self.costs = costs
        self.token = token
        self.keys = [store.reservation_key(token), *(store.bucket_key(b) for b in buckets)]
        self.args = [",".join(map(str, args))]  # one argument: cheaper to send than many
        self.describe = store.describe

    def outcome(self, reply: object) -> Reservation | Exhausted:
        if not isinstance(reply, list) or not reply:
            raise CounterStoreUnavailable(f"{self.describe()}: unexpected reply {reply!r}")
        if int(reply[0]) == 0:
            return Exhausted(claim=self.claims[int(reply[1]) - 1], retry_after=int(reply[2]))
        starts = [int(start) for start in reply[1:]]
        entries = tuple(zip(self.buckets, starts, self.costs, strict=True))
        return Reservation(entries=entries, token=self.token if any(self.costs) else "")
