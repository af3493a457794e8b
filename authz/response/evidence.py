"""Give-back evidence, pure: whether a call that took quota can be shown not to have run.

Only the response headers and Envoy's account of the response count (its
`response.code_details` and `response.flags`): a local reply flagged as never delivered,
or an HTTP 4xx from the server itself (the MCP transport refuses a request with a 4xx
before it dispatches it). Nothing the body says counts, nor a 5xx from the server, nor a
stream that ends early (README, "Quota give-back").
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DELIVERED_FLAGS",
    "NOT_DELIVERED_FLAGS",
    "VIA_UPSTREAM",
    "give_back_evidence",
]

VIA_UPSTREAM: Final = "via_upstream"
"""Envoy's `response.code_details` for a response the upstream sent."""

# Envoy's response flags (`response.flags`, a bit set; envoy/stream_info/stream_info.h).
FLAG_UH: Final = 0x2  # no healthy upstream
FLAG_UT: Final = 0x4  # upstream request timeout
FLAG_LR: Final = 0x8  # local reset
FLAG_UR: Final = 0x10  # upstream remote reset
FLAG_UF: Final = 0x20  # upstream connection failure
FLAG_UC: Final = 0x40  # upstream connection termination
FLAG_UO: Final = 0x80  # upstream overflow (circuit breaker)
FLAG_URX: Final = 0x8000  # upstream retry limit exceeded
FLAG_SI: Final = 0x10000  # stream idle timeout
FLAG_UMSDR: Final = 0x80000  # upstream max stream duration reached
FLAG_UPE: Final = 0x800000  # upstream protocol error
FLAG_NC: Final = 0x1000000  # no cluster found
FLAG_DF: Final = 0x4000000  # DNS resolution failed
FLAG_DO: Final = 0x8000000  # drop overload

NOT_DELIVERED_FLAGS: Final = FLAG_UH | FLAG_UF | FLAG_UO | FLAG_NC | FLAG_DF | FLAG_DO
"""Envoy never sent the request: the call cannot have run."""
DELIVERED_FLAGS: Final = (
    FLAG_UT | FLAG_LR | FLAG_UR | FLAG_UC | FLAG_URX | FLAG_SI | FLAG_UMSDR | FLAG_UPE
)
"""The request may have reached the server (a reset, a timeout, a retry after one)."""


def give_back_evidence(status: int | None, details: str | None, flags: int | None) -> str | None:
    """Why the quota of a call goes back (`not_delivered`, `refused`), or None: no evidence
    that the server did not run it. `details`/`flags` are Envoy's `response.code_details` and
    `response.flags` (None when Envoy did not send them: no evidence either)."""
    if details is None or flags is None:
        return None
    if details != VIA_UPSTREAM:
        if flags & NOT_DELIVERED_FLAGS and not flags & DELIVERED_FLAGS:
            return "not_delivered"
        return None
    if status is not None and 400 <= status < 500:
        return "refused"
    return None
