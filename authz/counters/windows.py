"""Fixed windows aligned to the UTC epoch (the only window arithmetic in mcp-authz).

A window of `seconds` covers `[k * seconds, (k + 1) * seconds)` for an integer `k`, so a
minute window starts on the minute, an hour window on the hour and a day window at
00:00 UTC, whatever process computes it.
"""

from __future__ import annotations

import math

__all__ = ["retry_after", "window_end", "window_start"]


def window_start(now: float, seconds: int) -> int:
    """Epoch second at which the window containing `now` starts."""
    if seconds <= 0:
        raise ValueError(f"window length must be positive, got {seconds}")
    return int(now // seconds) * seconds


def window_end(now: float, seconds: int) -> int:
    """Epoch second at which the window containing `now` ends (the next one starts)."""
    return window_start(now, seconds) + seconds


def retry_after(now: float, seconds: int) -> int:
    """Whole seconds until the window containing `now` ends, rounded up, at least 1."""
    return max(1, math.ceil(window_end(now, seconds) - now))
