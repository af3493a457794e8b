"""Fixed windows aligned to the UTC epoch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz.counters.windows import retry_after, window_end, window_start

T0 = datetime(2026, 3, 1, 10, 31, 47, 250000, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("seconds", "start"),
    [
        (1, datetime(2026, 3, 1, 10, 31, 47, tzinfo=UTC)),
        (60, datetime(2026, 3, 1, 10, 31, tzinfo=UTC)),
        (3600, datetime(2026, 3, 1, 10, tzinfo=UTC)),
        (86400, datetime(2026, 3, 1, tzinfo=UTC)),
    ],
)
def test_windows_align_to_utc_calendar(seconds: int, start: datetime) -> None:
    assert window_start(T0, seconds) == start.timestamp()
    assert window_end(T0, seconds) == start.timestamp() + seconds


@pytest.mark.parametrize(
    ("now", "seconds", "expected"),
    [
        (120.0, 60, 60),  # at the very start: a whole window
        (120.1, 60, 60),  # 59.9 s left: rounded up
        (179.0, 60, 1),
        (179.999, 60, 1),  # never 0
        (T0, 60, 13),  # 10:31:47.25 → 12.75 s left
        (T0, 86400, 48493),
        (5.5, 1, 1),
    ],
)
def test_retry_after(now: float, seconds: int, expected: int) -> None:
    assert retry_after(now, seconds) == expected


def test_window_length_must_be_positive() -> None:
    with pytest.raises(ValueError):
        window_start(1.0, 0)


@given(st.floats(min_value=0, max_value=4e9), st.sampled_from([1, 60, 3600, 86400]))
def test_window_contains_now(now: float, seconds: int) -> None:
    start = window_start(now, seconds)
    assert start <= now < start + seconds
    assert start % seconds == 0
    assert 1 <= retry_after(now, seconds) <= seconds
