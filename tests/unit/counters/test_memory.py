"""The memory counter store: all-or-nothing reservations in fixed windows."""

from __future__ import annotations

from dataclasses import replace

from authz.counters import CounterStore, MemoryCounterStore
from authz.model import Claim, Exhausted, Reservation

NOW = 1_800_000_000.0  # a minute boundary (divisible by 60 and by 3600)


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


async def test_is_a_counter_store() -> None:
    store = MemoryCounterStore()
    assert isinstance(store, CounterStore)
    assert store.describe() == "memory (0 buckets)"
    await store.close()


async def test_thirty_allowed_then_thirty_first_exhausted() -> None:
    store = MemoryCounterStore()
    c = claim()
    for i in range(30):
        result = await store.reserve([c], NOW + i)
        assert isinstance(result, Reservation), i
        assert result.entries == ((c.bucket, int(NOW), 1),)
    result = await store.reserve([c], NOW + 48)
    assert result == Exhausted(claim=c, retry_after=12)
    assert store.count(c.bucket, NOW) == 30


async def test_max_zero_always_exhausted() -> None:
    store = MemoryCounterStore()
    assert isinstance(await store.reserve([claim(max_=0)], NOW), Exhausted)


async def test_separate_grants_separate_buckets() -> None:
    store = MemoryCounterStore()
    a, b = claim(key="g-1", max_=1), claim(key="g-2", max_=1)
    assert isinstance(await store.reserve([a], NOW), Reservation)
    assert isinstance(await store.reserve([a], NOW), Exhausted)
    assert isinstance(await store.reserve([b], NOW), Reservation)


async def test_all_or_nothing_across_limits() -> None:
    store = MemoryCounterStore()
    roomy = claim(counter="roomy", max_=10)
    tight = claim(counter="tight", max_=1)
    assert isinstance(await store.reserve([tight], NOW), Reservation)
    result = await store.reserve([roomy, tight], NOW)
    assert isinstance(result, Exhausted) and result.claim == tight
    assert store.count(roomy.bucket, NOW) == 0  # untouched


async def test_first_exhausted_claim_in_order() -> None:
    store = MemoryCounterStore()
    hour = claim(counter="h", max_=0, window=3600)
    minute = claim(counter="m", max_=0, window=60)
    result = await store.reserve([minute, hour], NOW + 30)
    assert result == Exhausted(claim=minute, retry_after=30)
    result = await store.reserve([hour, minute], NOW + 30)
    assert result == Exhausted(claim=hour, retry_after=3570)


async def test_shared_counter_names_share_a_bucket() -> None:
    store = MemoryCounterStore()
    from_tool_a = claim(counter="images", max_=2, rule="/tools/a/limits/images")
    from_tool_b = claim(counter="images", max_=2, rule="/tools/b/limits/images")
    assert from_tool_a.bucket == from_tool_b.bucket
    assert isinstance(await store.reserve([from_tool_a], NOW), Reservation)
    assert isinstance(await store.reserve([from_tool_b], NOW), Reservation)
    result = await store.reserve([from_tool_a], NOW)
    assert isinstance(result, Exhausted) and result.claim == from_tool_a


async def test_same_bucket_twice_in_one_call_counted_once_strictest_max() -> None:
    store = MemoryCounterStore()
    tool_limit = claim(counter="c", max_=5, rule="/tools/t/limits/c")
    all_limit = claim(counter="c", max_=2, rule="/all_tools/limits/c")
    for _ in range(2):
        result = await store.reserve([tool_limit, all_limit], NOW)
        assert isinstance(result, Reservation)
        assert len(result.entries) == 1 and result.entries[0][2] == 1
    assert store.count(tool_limit.bucket, NOW) == 2
    result = await store.reserve([tool_limit, all_limit], NOW)
    assert isinstance(result, Exhausted) and result.claim == all_limit  # the strictest one


async def test_costs_other_than_one() -> None:
    store = MemoryCounterStore()
    spend = claim(counter="spend", max_=100, cost=60, window=86400)
    assert isinstance(await store.reserve([spend], NOW), Reservation)
    assert isinstance(await store.reserve([spend], NOW), Exhausted)  # 120 > 100
    assert isinstance(await store.reserve([replace(spend, cost=40)], NOW), Reservation)
    assert store.count(spend.bucket, NOW) == 100


async def test_window_rollover() -> None:
    store = MemoryCounterStore()
    c = claim(max_=1)
    assert isinstance(await store.reserve([c], NOW + 59.9), Reservation)
    result = await store.reserve([c], NOW + 59.99)
    assert isinstance(result, Exhausted) and result.retry_after == 1
    rolled = await store.reserve([c], NOW + 60)
    assert isinstance(rolled, Reservation)
    assert rolled.entries[0][1] == int(NOW) + 60
    assert store.count(c.bucket, NOW + 60) == 1


async def test_release_is_idempotent_and_never_below_zero() -> None:
    store = MemoryCounterStore()
    c = claim(max_=1)
    first = await store.reserve([c], NOW)
    assert isinstance(first, Reservation)
    await store.release(first)
    await store.release(first)
    assert store.count(c.bucket, NOW) == 0
    second = await store.reserve([c], NOW)
    assert isinstance(second, Reservation)
    await store.release(first)  # already given back: must not free second's unit
    assert store.count(c.bucket, NOW) == 1
    forged = Reservation(entries=((c.bucket, int(NOW), 5),))
    await store.release(forged)  # not issued by this store: ignored
    assert store.count(c.bucket, NOW) == 1
    await store.release(second)
    assert store.count(c.bucket, NOW) == 0


async def test_release_only_in_the_same_window() -> None:
    store = MemoryCounterStore()
    c = claim(max_=5)
    old = await store.reserve([c], NOW + 10)
    assert isinstance(old, Reservation)
    assert isinstance(await store.reserve([c], NOW + 70), Reservation)  # next window
    await store.release(old)
    assert store.count(c.bucket, NOW + 70) == 1


async def test_release_of_an_equal_but_distinct_reservation() -> None:
    store = MemoryCounterStore()
    c = claim(max_=5)
    a = await store.reserve([c], NOW)
    b = await store.reserve([c], NOW)
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    assert a.entries == b.entries and a.token != b.token  # same buckets, two units taken
    await store.release(a)
    await store.release(a)
    assert store.count(c.bucket, NOW) == 1
    await store.release(b)
    assert store.count(c.bucket, NOW) == 0


async def test_expired_keys_reclaimed() -> None:
    store = MemoryCounterStore(sweep_interval=60)
    for i in range(100):
        assert isinstance(await store.reserve([claim(key=f"g-{i}")], NOW), Reservation)
    daily = claim(counter="daily", window=86400)
    assert isinstance(await store.reserve([daily], NOW), Reservation)
    assert store.bucket_count == 101
    await store.reserve([claim(key="late")], NOW + 3600)  # a sweep is due: minute buckets go
    assert store.bucket_count == 2  # the daily bucket and the new one
    assert store.describe() == "memory (2 buckets)"


async def test_outstanding_reservations_are_bounded() -> None:
    store = MemoryCounterStore(max_outstanding=2)
    c = claim(max_=10)
    first = await store.reserve([c], NOW)
    assert isinstance(first, Reservation)
    for _ in range(2):
        await store.reserve([c], NOW)
    await store.release(first)  # forgotten (oldest dropped): the release is a no-op
    assert store.count(c.bucket, NOW) == 3


async def test_empty_claims_reserve_nothing() -> None:
    store = MemoryCounterStore()
    assert await store.reserve([], NOW) == Reservation()
    await store.release(Reservation())
    assert store.bucket_count == 0


async def test_close_forgets_everything() -> None:
    store = MemoryCounterStore()
    await store.reserve([claim()], NOW)
    await store.close()
    assert store.bucket_count == 0


async def test_at_the_bound_the_oldest_reservation_goes_first() -> None:
    store = MemoryCounterStore(max_outstanding=3)
    c = claim(max_=100)
    taken = [await store.reserve([c], NOW) for _ in range(6)]
    assert all(isinstance(r, Reservation) for r in taken)
    for reservation in taken:  # the first three were forgotten: their release is a no-op
        assert isinstance(reservation, Reservation)
        await store.release(reservation)
    assert store.count(c.bucket, NOW) == 3
