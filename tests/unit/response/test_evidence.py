"""Give-back evidence, pure (authz/response/evidence.py): only Envoy's account of a response
shows that a call did not run."""

from __future__ import annotations

import pytest

from authz.response.evidence import NOT_DELIVERED_FLAGS, give_back_evidence

UF, UH, UR, UC, UT, UAEX = 0x20, 0x2, 0x10, 0x40, 0x4, 0x1000
EARLY_RESET = "upstream_reset_before_response_started{remote_connection_failure}"


@pytest.mark.parametrize(
    ("status", "details", "flags", "reason"),
    [
        (503, "upstream_reset_before_response_started{connection_failure}", UF, "not_delivered"),
        (503, "no_healthy_upstream", UH, "not_delivered"),
        (503, "upstream_reset_before_response_started{overflow}", 0x80, "not_delivered"),
        (400, "via_upstream", 0, "refused"),
        (404, "via_upstream", 0, "refused"),
        (500, "via_upstream", 0, None),  # a JSON-response server's status comes after the run
        (503, "via_upstream", 0, None),
        (200, "via_upstream", 0, None),
        (503, EARLY_RESET, UC, None),  # delivered, then the connection closed
        (503, EARLY_RESET, UR, None),
        (504, "upstream_response_timeout", UT, None),
        (503, EARLY_RESET, UF | UR, None),  # a retry after a delivered attempt
        (403, "ext_authz_denied", UAEX, None),
        (400, None, None, None),  # no attributes from Envoy: no evidence
        (503, EARLY_RESET, None, None),
    ],
)
def test_give_back_evidence(
    status: int, details: str | None, flags: int | None, reason: str | None
) -> None:
    assert give_back_evidence(status, details, flags) == reason
    assert NOT_DELIVERED_FLAGS & UF
