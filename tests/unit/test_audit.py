"""What the audit events of decisions and approvals may carry: never a query string, an
argument value, or a digest that can be brute-forced back to the values."""

from __future__ import annotations

import json

import pytest
import structlog

from authz.audit import AuditContext, log_decision, path_without_query
from authz.model import Decision, DenyKind


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/mcp", "/mcp"),
        ("/mcp?access_token=s3cret", "/mcp"),
        ("/mcp?", "/mcp"),
        ("/mcp?a=1?b=2", "/mcp"),
        ("/mcp#frag?x", "/mcp"),
        ("/other/path?token=x", "/other/path"),
        ("", ""),
    ],
)
def test_path_without_query(path: str, logged: str) -> None:
    assert path_without_query(path) == logged


def test_the_decision_event_drops_the_query_string() -> None:
    with structlog.testing.capture_logs() as logs:
        log_decision(
            AuditContext("d1", None, "POST", "/mcp?access_token=tok-123&x=1"),
            Decision.deny(DenyKind.BAD_REQUEST, "credentials in the URL", rule="(http)"),
            grant=None,
            request=None,
            policy_name=None,
            policy_hash=None,
            duration_ms=0.1,
        )
    (event,) = logs
    assert event["path"] == "/mcp"
    assert "tok-123" not in json.dumps(event, default=str)
