"""Counter stores: one small interface (`CounterStore`) and its implementations."""

from authz.counters.base import Bucket, CounterStore, CounterStoreUnavailable
from authz.counters.memory import MemoryCounterStore
from authz.counters.windows import retry_after, window_end, window_start

__all__ = [
    "Bucket",
    "CounterStore",
    "CounterStoreUnavailable",
    "MemoryCounterStore",
    "retry_after",
    "window_end",
    "window_start",
]
