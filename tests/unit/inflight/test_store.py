"""The in-flight registry (authz/inflight/): keys, and both stores with one contract."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from authz.inflight import InflightStoreUnavailable, MemoryInflightStore, inflight_key
from authz.inflight.redis import RedisInflightStore
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
        ttl_ms = await store.client.pttl(f"ttl:{{i}}:{key}")
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
