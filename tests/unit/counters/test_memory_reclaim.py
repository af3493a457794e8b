"""The memory counter store reclaims the buckets of ended windows: memory stays bounded.

Keys are partly caller-chosen (session-scoped limits are keyed by Mcp-Session-Id), so a
store that kept every key it ever saw would grow with traffic. It must hold at most the
keys whose window is still live, plus those seen since the last sweep.
"""

from __future__ import annotations

from authz.counters import MemoryCounterStore
from authz.model import Claim, Reservation

NOW = 1_800_000_000.0  # a minute boundary


def session_claim(session: int, window: int = 1, max_: int = 3) -> Claim:
    return Claim("openai_session", "session", ("g-1", f"s-{session}"), window, max_, 1, "/tools/t")


async def test_expired_session_buckets_are_reclaimed_at_the_next_sweep() -> None:
    store = MemoryCounterStore(sweep_interval=10.0)
    # 10 s of traffic, 500 new session keys a second, each in a 1 s window
    for second in range(10):
        for i in range(500):
            claim = session_claim(second * 500 + i)
            assert isinstance(await store.reserve([claim], NOW + second + 0.5), Reservation)
    assert store.bucket_count == 5000  # nothing swept yet: the first sweep ran at NOW
    # the next call after the sweep interval drops every bucket whose window has ended
    await store.reserve([session_claim(10**6)], NOW + 10.5)
    assert store.bucket_count == 1
    assert store.describe() == "memory (1 buckets)"


async def test_bucket_count_stays_bounded_over_many_sweeps() -> None:
    store = MemoryCounterStore(sweep_interval=5.0)
    peak = 0
    for second in range(600):  # ten minutes of 200 new keys a second
        for i in range(200):
            await store.reserve([session_claim(second * 200 + i)], NOW + second + 0.25)
        peak = max(peak, store.bucket_count)
    # at most one sweep interval (plus the live window) of keys, never the 120 000 seen
    assert peak <= 200 * 6
    assert store.bucket_count <= 200 * 6


async def test_live_windows_survive_the_sweep_with_their_counts() -> None:
    store = MemoryCounterStore(sweep_interval=1.0)
    minute = Claim("images", "grant", ("g-1",), 60, 3, 1, "/tools/t")
    for t in (0.0, 1.0, 2.0):
        assert isinstance(await store.reserve([minute], NOW + t), Reservation)
    for second in range(3, 50):  # many sweeps inside the minute, with other short keys
        await store.reserve([session_claim(second)], NOW + second)
    assert store.count(minute.bucket, NOW + 50) == 3  # not reset by any sweep
    assert store.bucket_count == 2  # the minute bucket and the latest 1 s bucket
    # the next minute: the old bucket is reclaimed and the limit has room again
    assert isinstance(await store.reserve([minute], NOW + 61), Reservation)
    assert store.bucket_count == 1
    assert store.count(minute.bucket, NOW + 61) == 1


async def test_reservations_kept_for_release_are_reclaimed_too() -> None:
    store = MemoryCounterStore(sweep_interval=1.0)
    old = await store.reserve([session_claim(1)], NOW)
    assert isinstance(old, Reservation)
    await store.reserve([session_claim(2)], NOW + 5)  # sweeps: window of `old` has ended
    assert store.bucket_count == 1
    # releasing a reservation of an ended, reclaimed window is a no-op (never negative)
    await store.release(old)
    assert store.count(session_claim(1).bucket, NOW) == 0
    assert store.bucket_count == 1


async def test_outstanding_reservations_are_capped() -> None:
    store = MemoryCounterStore(sweep_interval=3600.0, max_outstanding=100)
    day = [Claim("d", "session", ("g", str(i)), 86_400, 1, 1, "/tools/t") for i in range(1000)]
    first = await store.reserve([day[0]], NOW)
    assert isinstance(first, Reservation)
    for claim in day[1:]:
        await store.reserve([claim], NOW + 1)
    # the oldest tracked reservation was dropped: releasing it no longer gives quota back
    await store.release(first)
    assert store.count(day[0].bucket, NOW + 2) == 1
