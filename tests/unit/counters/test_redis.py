"""The Redis counter store against REAL redis-server processes (standalone and a cluster).

The shared semantics run on both stores (memory and Redis) with the real clock: the Redis
store takes its windows from the Redis server's `TIME`, which on this machine is the clock
the memory store is given. A missing `redis-server` fails these tests; it never skips them.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from authz.counters import CounterStore, MemoryCounterStore, window_start
from authz.counters.base import Bucket, CounterStoreUnavailable
from authz.counters.redis import EXPIRE_MARGIN_MS, RedisCounterStore
from authz.model import Claim, Exhausted, Reservation
from tests.redis_server import RedisClusterProcesses, RedisNotInstalled, RedisServer

Store = MemoryCounterStore | RedisCounterStore
TOKEN = re.compile(r"[0-9a-f]{32}")
ODD_IDS = [
    "a:b{c}d e/é",
    "a:b{c}d e/è",
    "a",
    "a:b",
    "a%3Ab",
    "{c}",
    "}{",
    " ",
    "\t\n",
    "é",
    "\ud800",
]


def claim(
    counter: str = "image.generate.gemini_rate",
    key: str | tuple[str, ...] = "g-1",
    max_: int = 30,
    window: int = 60,
    scope: str = "grant",
    cost: int = 1,
    rule: str = "/tools/t/limits/c",
) -> Claim:
    """A claim; `key` is who shares the bucket: one grant id, the parts, or "" for all."""
    sharers = key if isinstance(key, tuple) else (key,) if key else ()
    return Claim(counter, scope, sharers, window, max_, cost, rule)


async def count(store: Store, bucket: Bucket) -> int:
    if isinstance(store, MemoryCounterStore):
        return store.count(bucket, time.time())
    return await store.count(bucket)


async def clear_of_window_end(window: int, margin: float = 1.0) -> None:
    """Sleep into the next window if the current one ends within `margin` seconds."""
    now = time.time()
    left = window_start(now, window) + window - now
    if left < margin:
        await asyncio.sleep(left + 0.02)


async def next_redis_second(client: Redis | RedisCluster) -> int:
    """Wait until Redis `TIME` enters a new second; return that second."""
    first = (await client.time())[0]
    while True:
        second = int((await client.time())[0])
        if second != first:
            return second
        await asyncio.sleep(0.005)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


@pytest.fixture
async def redis_store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisCounterStore]:
    store = RedisCounterStore.from_url(redis_server.url, prefix=prefix, timeout=1.0)
    yield store
    await store.close()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.processes)])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryCounterStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisCounterStore.from_url(server.url, prefix=prefix, timeout=1.0)
    yield made
    await made.close()


# -- the shared semantics, on both stores -------------------------------------------------


async def test_is_a_counter_store(store: Store) -> None:
    assert isinstance(store, CounterStore)


async def test_thirty_allowed_then_thirty_first_exhausted(store: Store) -> None:
    await clear_of_window_end(60)
    c = claim()
    tokens = set()
    for i in range(30):
        result = await store.reserve([c], time.time())
        assert isinstance(result, Reservation), i
        assert result.entries == ((c.bucket, window_start(time.time(), 60), 1),)
        assert TOKEN.fullmatch(result.token)
        tokens.add(result.token)
    assert len(tokens) == 30
    result = await store.reserve([c], time.time())
    assert isinstance(result, Exhausted) and result.claim == c
    expected = math.ceil(window_start(time.time(), 60) + 60 - time.time())
    assert 1 <= result.retry_after <= 60 and abs(result.retry_after - expected) <= 1
    assert await count(store, c.bucket) == 30


async def test_separate_grants_separate_buckets(store: Store) -> None:
    await clear_of_window_end(60)
    a, b = claim(key="g-1", max_=1), claim(key="g-2", max_=1)
    assert isinstance(await store.reserve([a], time.time()), Reservation)
    assert isinstance(await store.reserve([a], time.time()), Exhausted)
    assert isinstance(await store.reserve([b], time.time()), Reservation)


async def test_all_or_nothing_across_limits(store: Store) -> None:
    await clear_of_window_end(60)
    roomy = claim(counter="roomy", max_=10)
    tight = claim(counter="tight", max_=1, scope="global", key="")
    assert isinstance(await store.reserve([tight], time.time()), Reservation)
    result = await store.reserve([roomy, tight], time.time())
    assert isinstance(result, Exhausted) and result.claim == tight
    assert await count(store, roomy.bucket) == 0  # untouched
    assert await count(store, tight.bucket) == 1


async def test_first_exhausted_claim_in_order(store: Store) -> None:
    await clear_of_window_end(60)
    hour = claim(counter="h", max_=0, window=3600)
    minute = claim(counter="m", max_=0, window=60)
    result = await store.reserve([minute, hour], time.time())
    assert isinstance(result, Exhausted) and result.claim == minute
    assert 1 <= result.retry_after <= 60
    result = await store.reserve([hour, minute], time.time())
    assert isinstance(result, Exhausted) and result.claim == hour
    expected = math.ceil(window_start(time.time(), 3600) + 3600 - time.time())
    assert abs(result.retry_after - expected) <= 1


async def test_shared_counter_names_share_a_bucket(store: Store) -> None:
    await clear_of_window_end(60)
    from_tool_a = claim(counter="images", max_=2, rule="/tools/a/limits/images")
    from_tool_b = claim(counter="images", max_=2, rule="/tools/b/limits/images")
    assert isinstance(await store.reserve([from_tool_a], time.time()), Reservation)
    assert isinstance(await store.reserve([from_tool_b], time.time()), Reservation)
    result = await store.reserve([from_tool_a], time.time())
    assert isinstance(result, Exhausted) and result.claim == from_tool_a


async def test_same_bucket_twice_counted_once_strictest_max(store: Store) -> None:
    await clear_of_window_end(60)
    tool_limit = claim(counter="c", max_=5, rule="/tools/t/limits/c")
    all_limit = claim(counter="c", max_=2, rule="/all_tools/limits/c")
    for _ in range(2):
        result = await store.reserve([tool_limit, all_limit], time.time())
        assert isinstance(result, Reservation)
        assert len(result.entries) == 1 and result.entries[0][2] == 1
    assert await count(store, tool_limit.bucket) == 2
    result = await store.reserve([tool_limit, all_limit], time.time())
    assert isinstance(result, Exhausted) and result.claim == all_limit  # the strictest one


async def test_same_bucket_twice_takes_the_largest_cost(store: Store) -> None:
    await clear_of_window_end(60)
    small = claim(counter="w", max_=10, cost=2)
    large = claim(counter="w", max_=10, cost=5, rule="/all_tools/limits/w")
    result = await store.reserve([small, large], time.time())
    assert isinstance(result, Reservation) and result.entries[0][2] == 5
    assert await count(store, small.bucket) == 5


async def test_weighted_costs(store: Store) -> None:
    await clear_of_window_end(60)
    three = claim(counter="spend", max_=10, cost=3)
    for i in range(3):
        result = await store.reserve([three], time.time())
        assert isinstance(result, Reservation), i
        assert result.entries[0][2] == 3
    result = await store.reserve([three], time.time())
    assert isinstance(result, Exhausted) and result.claim == three  # 9 + 3 > 10
    assert isinstance(await store.reserve([replace(three, cost=1)], time.time()), Reservation)
    assert isinstance(await store.reserve([replace(three, cost=1)], time.time()), Exhausted)
    assert await count(store, three.bucket) == 10


async def test_cost_zero_fits_and_takes_nothing(store: Store) -> None:
    await clear_of_window_end(60)
    full = claim(counter="z", max_=1)
    assert isinstance(await store.reserve([full], time.time()), Reservation)
    free = await store.reserve([replace(full, cost=0)], time.time())
    assert isinstance(free, Reservation)
    assert free.token == "" and free.entries[0][2] == 0  # nothing to give back
    assert isinstance(await store.reserve([claim(counter="none", max_=0, cost=0)], 0), Reservation)
    await store.release(free)
    assert await count(store, full.bucket) == 1


async def test_release_is_idempotent_and_never_below_zero(store: Store) -> None:
    await clear_of_window_end(60)
    c = claim(max_=2)
    first = await store.reserve([c], time.time())
    assert isinstance(first, Reservation)
    await store.release(first)
    await store.release(first)
    assert await count(store, c.bucket) == 0
    second = await store.reserve([c], time.time())
    third = await store.reserve([c], time.time())
    assert isinstance(second, Reservation) and isinstance(third, Reservation)
    assert second.entries == third.entries and second.token != third.token
    await store.release(first)  # already given back: must not free another's unit
    assert await count(store, c.bucket) == 2
    forged = Reservation(entries=((c.bucket, second.entries[0][1], 5),))
    await store.release(forged)  # no token: not issued by this store
    await store.release(replace(forged, token="0" * 32))  # a token never issued
    assert await count(store, c.bucket) == 2
    await store.release(replace(forged, token=second.token))  # inflated: the record wins
    assert await count(store, c.bucket) == 1
    await store.release(second)  # already given back through the forged copy
    assert await count(store, c.bucket) == 1
    await store.release(third)
    await store.release(third)
    assert await count(store, c.bucket) == 0


async def test_release_after_the_window_rolled_is_a_noop(store: Store) -> None:
    c = claim(window=1, max_=5)
    await asyncio.sleep(math.ceil(time.time()) - time.time() + 0.02)  # early in a second
    old = await store.reserve([c], time.time())
    assert isinstance(old, Reservation)
    await asyncio.sleep(math.ceil(time.time()) - time.time() + 0.02)  # the next second
    new = await store.reserve([c], time.time())
    assert isinstance(new, Reservation)
    assert new.entries[0][1] == old.entries[0][1] + 1
    await store.release(old)
    assert await count(store, c.bucket) == 1


async def test_empty_claims_reserve_nothing(store: Store) -> None:
    assert await store.reserve([], time.time()) == Reservation()
    await store.release(Reservation())


# -- Redis: construction, description, health ---------------------------------------------


async def test_describe_and_ping(redis_server: RedisServer, prefix: str) -> None:
    store = RedisCounterStore.from_url(redis_server.url, prefix=prefix)
    assert store.describe() == f"redis {redis_server.url} prefix={prefix}"
    assert await store.ping() is True
    await store.close()
    client = Redis(host="127.0.0.1", port=redis_server.port)
    store = RedisCounterStore(client)
    assert store.describe() == f"redis {redis_server.url} prefix=mcp-authz"
    await store.close()
    secret = RedisCounterStore.from_url("redis://user:s3cret@127.0.0.1:6399/2")
    assert secret.describe() == "redis redis://127.0.0.1:6399/2 prefix=mcp-authz"
    await secret.close()


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a b", "a\nb"])
def test_prefix_must_not_break_the_key_layout(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisCounterStore(Redis(), prefix=bad)


def test_a_missing_redis_server_is_an_error_not_a_skip() -> None:
    with pytest.raises(RedisNotInstalled, match="not found"):
        RedisServer(binary="redis-server-that-is-not-installed").start()


# -- Redis: atomicity, keys, expiry, clock ------------------------------------------------


async def test_two_replicas_fifty_concurrent_reserves_each_exactly_thirty(
    redis_server: RedisServer, prefix: str
) -> None:
    replicas = [
        RedisCounterStore.from_url(redis_server.url, prefix=prefix, timeout=2.0) for _ in "ab"
    ]
    await clear_of_window_end(60, margin=3.0)
    c = claim(max_=30)
    results = await asyncio.gather(
        *(replica.reserve([c], time.time()) for replica in replicas for _ in range(50))
    )
    assert sum(isinstance(r, Reservation) for r in results) == 30
    assert sum(isinstance(r, Exhausted) for r in results) == 70
    assert await replicas[0].count(c.bucket) == 30
    for replica in replicas:
        await replica.close()


async def test_keys_expire_with_their_window(redis_store: RedisCounterStore) -> None:
    await clear_of_window_end(60)
    client = redis_store.client
    minute, hour = claim(counter="m"), claim(counter="h", window=3600)
    result = await redis_store.reserve([minute, hour], time.time())
    assert isinstance(result, Reservation)
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    for c, (_, start, _) in zip((minute, hour), result.entries, strict=True):
        key = redis_store.bucket_key(c.bucket)
        expected = (start + c.window_seconds) * 1000 + EXPIRE_MARGIN_MS - now_ms
        assert abs(await client.pttl(key) - expected) < 250
        assert await client.hgetall(key) == {b"w": str(start).encode(), b"c": b"1"}
    record = redis_store.reservation_key(result.token)
    hour_end = result.entries[1][1] + 3600
    assert abs(await client.pttl(record) - (hour_end * 1000 + EXPIRE_MARGIN_MS - now_ms)) < 250
    await redis_store.release(result)
    assert await client.exists(record) == 0


async def test_key_names_are_safe_for_any_id(redis_store: RedisCounterStore) -> None:
    await clear_of_window_end(60)
    claims = [claim(key=i, max_=1) for i in ODD_IDS]
    claims += [claim(counter="x:y", key="z", max_=1), claim(counter="x", key="y:z", max_=1)]
    claims += [claim(scope="session", key=("g-1", i), max_=1) for i in ODD_IDS]
    # the parts never join: grant `team` in session `ci` is not grant `team/ci`
    claims += [claim(scope="session", key=k, max_=1) for k in [("team", "ci"), ("team/ci",)]]
    for c in claims:  # distinct ids, distinct buckets: each has its own unit
        assert isinstance(await redis_store.reserve([c], time.time()), Reservation), c
    for c in claims:
        assert isinstance(await redis_store.reserve([c], time.time()), Exhausted), c
    keys = [redis_store.bucket_key(c.bucket) for c in claims]
    assert len(set(keys)) == len(claims)
    base = f"{redis_store.prefix}:{{c}}:b:"
    for key in keys:
        assert key.startswith(base)
        assert re.fullmatch(r'\d+(:[A-Za-z0-9_.~%\[\]",-]*){3}', key[len(base) :]), key
    stored = {k.decode() async for k in redis_store.client.scan_iter(f"{redis_store.prefix}:*")}
    assert set(keys) <= stored
    slots = {key_slot(k.encode()) for k in stored} | {key_slot(b"{c}")}
    assert len(slots) == 1


async def test_windows_follow_the_redis_server_clock(redis_store: RedisCounterStore) -> None:
    c = claim(window=1, max_=2)
    second = await next_redis_second(redis_store.client)
    for _ in range(2):
        result = await redis_store.reserve([c], time.time())
        assert isinstance(result, Reservation) and result.entries[0][1] == second
    result = await redis_store.reserve([c], time.time())
    assert isinstance(result, Exhausted) and result.retry_after == 1
    following = await next_redis_second(redis_store.client)
    result = await redis_store.reserve([c], time.time())
    assert isinstance(result, Reservation) and result.entries[0][1] == following


async def test_a_skewed_replica_clock_does_not_split_the_window(
    redis_server: RedisServer, prefix: str
) -> None:
    ahead, behind = (RedisCounterStore.from_url(redis_server.url, prefix=prefix) for _ in "ab")
    await clear_of_window_end(60)
    c = claim(max_=3)
    server_start = window_start(float((await ahead.client.time())[0]), 60)
    first = await ahead.reserve([c], time.time() + 3600)
    second = await behind.reserve([c], 0.0)
    third = await ahead.reserve([c], time.time() - 86_400)
    for result in (first, second, third):
        assert isinstance(result, Reservation) and result.entries[0][1] == server_start
    assert isinstance(await behind.reserve([c], 0.0), Exhausted)
    assert isinstance(await ahead.reserve([c], time.time() + 3600), Exhausted)
    await ahead.close()
    await behind.close()


# -- Redis: faults -----------------------------------------------------------------------


async def test_redis_down_fails_fast_and_the_same_store_recovers(
    own_server: RedisServer,
) -> None:
    store = RedisCounterStore.from_url(own_server.url, timeout=0.25)
    c = claim(max_=5)
    taken = await store.reserve([c], time.time())
    assert isinstance(taken, Reservation)
    own_server.kill()
    for operation in (store.reserve([c], time.time()), store.release(taken)):
        started = time.monotonic()
        with pytest.raises(CounterStoreUnavailable) as raised:
            await operation
        assert time.monotonic() - started < 2.0
        assert raised.value.__cause__ is not None
    started = time.monotonic()
    assert await store.ping() is False
    assert time.monotonic() - started < 2.0
    own_server.start()  # same port, empty (nothing persisted), scripts unloaded
    assert await store.ping() is True
    result = await store.reserve([c], time.time())
    assert isinstance(result, Reservation)
    assert await store.count(c.bucket) == 1
    await store.close()


async def test_a_hung_redis_times_out_within_the_deadline(own_server: RedisServer) -> None:
    store = RedisCounterStore.from_url(own_server.url, timeout=0.25)
    c = claim(max_=5)
    assert isinstance(await store.reserve([c], time.time()), Reservation)
    own_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(CounterStoreUnavailable):
            await store.reserve([c], time.time())
        assert time.monotonic() - started < 1.0
        assert await store.ping() is False
    finally:
        own_server.resume()
    assert isinstance(await store.reserve([c], time.time()), Reservation)
    await store.close()


async def test_a_call_cut_off_by_the_deadline_leaves_no_reply_behind(
    own_server: RedisServer,
) -> None:
    """The timed-out script's reply must never be read as the answer to a later call: the
    connection it was sent on is dropped."""
    store = RedisCounterStore.from_url(own_server.url, timeout=0.25)
    c = claim(max_=5)
    assert isinstance(await store.reserve([c], time.time()), Reservation)
    own_server.pause()
    try:
        with pytest.raises(CounterStoreUnavailable):
            await store.reserve([c], time.time())
    finally:
        own_server.resume()
    # the server may still run the reserve it had received; either way, a count is a count
    assert await store.count(c.bucket) in (1, 2)
    assert isinstance(await store.reserve([c], time.time()), Reservation)
    await store.close()


async def test_scripts_are_loaded_again_after_a_flush(redis_store: RedisCounterStore) -> None:
    c = claim(max_=5)
    assert isinstance(await redis_store.reserve([c], time.time()), Reservation)
    await redis_store.client.script_flush()
    assert isinstance(await redis_store.reserve([c], time.time()), Reservation)
    assert await redis_store.count(c.bucket) == 2


# -- Redis Cluster -----------------------------------------------------------------------


async def test_cluster_one_call_mixes_scopes_without_crossslot(
    redis_cluster: RedisClusterProcesses, prefix: str
) -> None:
    store = RedisCounterStore.from_url(redis_cluster.url, cluster=True, prefix=prefix)
    assert store.describe().startswith("redis-cluster redis://127.0.0.1:")
    assert await store.ping() is True
    await clear_of_window_end(60)
    for odd in ODD_IDS:
        claims = [
            claim(counter="per-grant", scope="grant", key=odd, max_=2),
            claim(counter="per-session", scope="session", key=f"{odd}/s {odd}", max_=2),
            claim(counter="everyone", scope="global", key="", max_=100, window=3600),
        ]
        first = await store.reserve(claims, time.time())
        assert isinstance(first, Reservation) and len(first.entries) == 3
        assert isinstance(await store.reserve(claims, time.time()), Reservation)
        result = await store.reserve(claims, time.time())
        assert isinstance(result, Exhausted) and result.claim == claims[0]
        await store.release(first)
        assert isinstance(await store.reserve(claims, time.time()), Reservation)
    assert await store.count(claims[2].bucket) == 2 * len(ODD_IDS)  # 2 taken, 1 given back, 1
    await store.close()


async def test_cluster_concurrent_replicas_exactly_thirty(
    redis_cluster: RedisClusterProcesses, prefix: str
) -> None:
    replicas = [
        RedisCounterStore.from_url(redis_cluster.url, cluster=True, prefix=prefix, timeout=2.0)
        for _ in "ab"
    ]
    await clear_of_window_end(60, margin=3.0)
    claims = [
        claim(counter="images", scope="session", key="g-1/s-1", max_=30),
        claim(counter="all", scope="global", key="", max_=1000),
    ]
    results = await asyncio.gather(
        *(replica.reserve(claims, time.time()) for replica in replicas for _ in range(50))
    )
    assert sum(isinstance(r, Reservation) for r in results) == 30
    assert await replicas[1].count(claims[0].bucket) == 30
    assert await replicas[0].count(claims[1].bucket) == 30  # all or nothing
    for replica in replicas:
        await replica.close()
