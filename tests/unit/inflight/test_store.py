"""The in-flight registry (authz/inflight/): keys, and both stores with one contract, including
an id claimed together with a call's quota (`claim_reserving`) in memory, in Redis and in a
Redis Cluster."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from authz.counters import CounterStore, MemoryCounterStore
from authz.counters.redis import RedisCounterStore
from authz.inflight import InflightStoreUnavailable, MemoryInflightStore, inflight_key
from authz.inflight.redis import RedisInflightStore
from authz.model import Claim, Exhausted, Reservation
from tests.redis_server import RedisServer

Store = MemoryInflightStore | RedisInflightStore
NOW = 1_000_000.0


def test_keys_collide_exactly_as_the_sdk_compares_ids() -> None:
    assert inflight_key("s", 7) == inflight_key("s", "7")
    assert inflight_key("s", 2**70) == inflight_key("s", str(2**70))
    assert inflight_key("s", 7) != inflight_key("s", "07")
    assert inflight_key("s", 7) != inflight_key("t", 7)
    assert inflight_key("s", -1) == inflight_key("s", "-1")
    # the parts are encoded, so no session/id split can produce another's key
    assert inflight_key("a", "b,c") != inflight_key("a,b", "c")
    assert inflight_key('a"', "b") != inflight_key("a", '"b')
    assert len(inflight_key("s", "\u00e9\ud7ff")) == 64


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.processes)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryInflightStore(ttl=60)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisInflightStore.from_url(
            server.url, prefix=f"t-{secrets.token_hex(4)}", timeout=1.0, ttl=60
        )
    yield made
    await made.close()


async def test_one_owner_at_a_time_and_only_the_owner_releases(store: Store) -> None:
    key, other = inflight_key("s", 1), inflight_key("s", 2)
    assert await store.claim(key, "d1", NOW)
    assert not await store.claim(key, "d2", NOW)
    assert await store.claim(other, "d2", NOW)  # another id is independent
    await store.release(key, "d2")  # not the owner: a no-op
    assert not await store.claim(key, "d3", NOW)
    await store.release(key, "d1")
    assert await store.claim(key, "d3", NOW)
    await store.release(key, "d1")  # a late release of the old owner frees nothing
    assert not await store.claim(key, "d4", NOW)
    await store.release(inflight_key("s", 3), "d1")  # unknown: a no-op


async def test_a_lost_release_expires() -> None:
    store = MemoryInflightStore(ttl=10)
    key = inflight_key("s", 1)
    assert await store.claim(key, "d1", NOW)
    assert not await store.claim(key, "d2", NOW + 9.9)
    assert await store.claim(key, "d2", NOW + 10)
    await store.release(key, "d1")
    assert not await store.claim(key, "d3", NOW + 11)


async def test_redis_entries_expire_on_the_server(redis_server: RedisServer) -> None:
    store = RedisInflightStore.from_url(redis_server.url, prefix="ttl", timeout=1.0, ttl=5)
    try:
        key = inflight_key("s", 1)
        assert await store.claim(key, "d1", NOW)
        ttl_ms = await store.client.pttl(f"ttl:{{c}}:i:{key}")
        assert 0 < ttl_ms <= 5000
    finally:
        await store.close()


async def test_memory_is_bounded_oldest_first() -> None:
    store = MemoryInflightStore(ttl=60, max_entries=3)
    keys = [inflight_key("s", n) for n in range(5)]
    for n, key in enumerate(keys):
        assert await store.claim(key, f"d{n}", NOW + n)
    assert len(store) == 3
    assert await store.claim(keys[0], "again", NOW + 5)  # the oldest were dropped
    assert not await store.claim(keys[4], "again", NOW + 5)


async def test_a_redis_that_cannot_answer_raises_unavailable() -> None:
    store = RedisInflightStore.from_url("redis://127.0.0.1:1", timeout=0.2)
    try:
        with pytest.raises(InflightStoreUnavailable):
            await store.claim(inflight_key("s", 1), "d", NOW)
        with pytest.raises(InflightStoreUnavailable):
            await store.release(inflight_key("s", 1), "d")
    finally:
        await store.close()


# -- an id claimed and quota reserved in one step (claim_reserving) ----------------------------


def limit(max_: int = 2) -> list[Claim]:
    return [Claim("calls", "grant", ("g-1",), 3600, max_, 1, "/tools/t/limits/calls")]


async def taken(counters: CounterStore, claims: list[Claim]) -> int:
    if isinstance(counters, MemoryCounterStore):
        return counters.count(claims[0].bucket, time.time())
    assert isinstance(counters, RedisCounterStore)
    return await counters.count(claims[0].bucket)


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.processes),
        pytest.param("redis-cluster", marks=pytest.mark.processes),
    ]
)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, CounterStore]]:
    """The in-flight registry and the counters, as `mcp-authz serve` builds them: both in
    memory, or both on one Redis client (standalone or cluster)."""
    if request.param == "memory":
        yield MemoryInflightStore(ttl=60), MemoryCounterStore()
        return
    cluster = request.param == "redis-cluster"
    server = request.getfixturevalue("redis_cluster" if cluster else "redis_server")
    prefix = f"t-{secrets.token_hex(4)}"
    counters = RedisCounterStore.from_url(server.url, cluster=cluster, prefix=prefix, timeout=2.0)
    inflight = RedisInflightStore(
        counters.client, prefix=prefix, timeout=2.0, owns_client=False, ttl=60
    )
    yield inflight, counters
    await inflight.close()
    await counters.close()


async def test_claim_reserving_keeps_both_or_neither(stores: tuple[Store, CounterStore]) -> None:
    inflight, counters = stores
    claims = limit(max_=2)
    now = time.time()
    k1, k2, k3 = (inflight_key("s", n) for n in (1, 2, 3))
    first = await inflight.claim_reserving(k1, "d1", now, counters, claims)
    assert isinstance(first, Reservation) and first.token
    assert not await inflight.claim(k1, "x", now)  # the id is registered
    # the id in use: nothing is reserved
    assert await inflight.claim_reserving(k1, "d2", now, counters, claims) is None
    assert await taken(counters, claims) == 1
    assert isinstance(await inflight.claim_reserving(k2, "d2", now, counters, claims), Reservation)
    assert await taken(counters, claims) == 2
    # quota exhausted: the id is not kept, and nothing more is taken
    refused = await inflight.claim_reserving(k3, "d3", now, counters, claims)
    assert isinstance(refused, Exhausted) and refused.claim == claims[0]
    assert await taken(counters, claims) == 2
    assert await inflight.claim(k3, "d4", now)
    await inflight.release(k3, "d4")
    # a released id can be claimed again; a give-back makes room again
    await inflight.release(k1, "d1")
    await counters.release(first)
    again = await inflight.claim_reserving(k1, "d5", now, counters, claims)
    assert isinstance(again, Reservation)
    assert await taken(counters, claims) == 2
    await inflight.release(k1, "wrong owner")
    assert not await inflight.claim(k1, "x", now)


async def test_claim_reserving_raises_unavailable_when_redis_cannot_answer() -> None:
    counters = RedisCounterStore.from_url("redis://127.0.0.1:1", timeout=0.2)
    inflight = RedisInflightStore(counters.client, timeout=0.2, owns_client=False)
    try:
        with pytest.raises(InflightStoreUnavailable):
            await inflight.claim_reserving(inflight_key("s", 1), "d", NOW, counters, limit())
    finally:
        await counters.close()


async def test_two_steps_a_registry_that_cannot_answer_reserves_nothing() -> None:
    class Down(MemoryInflightStore):
        async def claim(self, key: str, owner: str, now: float) -> bool:
            raise OSError("down")

    counters = MemoryCounterStore()
    with pytest.raises(InflightStoreUnavailable):
        await Down().claim_reserving(inflight_key("s", 1), "d", NOW, counters, limit())
    assert counters.count(limit()[0].bucket, NOW) == 0


async def test_two_steps_counters_that_cannot_answer_leave_the_id_registered() -> None:
    class Broken(MemoryCounterStore):
        async def reserve(self, claims: Sequence[Claim], now: float) -> Reservation | Exhausted:
            raise ConnectionError("store down")

    inflight, key = MemoryInflightStore(), inflight_key("s", 1)
    with pytest.raises(ConnectionError):  # the counters' own error: the caller decides
        await inflight.claim_reserving(key, "d", NOW, Broken(), limit())
    assert not await inflight.claim(key, "other", NOW)


@pytest.mark.processes
async def test_two_steps_when_the_counters_are_elsewhere(redis_server: RedisServer) -> None:
    """A Redis registry with counters in memory: the two steps, same results."""
    inflight = RedisInflightStore.from_url(
        redis_server.url, prefix=f"t-{secrets.token_hex(4)}", timeout=1.0, ttl=60
    )
    counters, claims = MemoryCounterStore(), limit(max_=1)
    try:
        k1, k2 = inflight_key("s", 1), inflight_key("s", 2)
        assert isinstance(
            await inflight.claim_reserving(k1, "d1", NOW, counters, claims), Reservation
        )
        assert await inflight.claim_reserving(k1, "d2", NOW, counters, claims) is None
        assert isinstance(
            await inflight.claim_reserving(k2, "d2", NOW, counters, claims), Exhausted
        )
        assert await inflight.claim(k2, "d3", NOW)  # not kept
    finally:
        await inflight.close()
