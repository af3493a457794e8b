"""Requests in flight per MCP session: one small interface (`InflightStore`) and its
implementations, behind the request phase's id-collision check."""

from authz.inflight.base import (
    INFLIGHT_TTL_SECONDS,
    InflightStore,
    InflightStoreUnavailable,
    inflight_key,
)
from authz.inflight.memory import MemoryInflightStore

__all__ = [
    "INFLIGHT_TTL_SECONDS",
    "InflightStore",
    "InflightStoreUnavailable",
    "MemoryInflightStore",
    "inflight_key",
]
