"""Structured logging set-up and the per-decision audit event.

One JSON line per decision. The event carries argument *keys* only; tokens, the
Authorization header, argument values and query strings never enter an event (a query
string may carry a token: `path` is logged without it). A final processor drops any field
whose name marks it as secret, as a second line of defence.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from authz.model import Approval, Decision, Grant, McpRequest

__all__ = [
    "AuditContext",
    "configure_logging",
    "log_approval",
    "log_decision",
    "path_without_query",
]


_SECRET_FIELDS = frozenset(
    {"token", "authorization", "arguments", "args", "params", "body", "raw_body", "password"}
)


def _drop_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_FIELDS:
            del event[key]
    return event


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once at start-up: JSON lines, UTC ISO time."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
            structlog.processors.format_exc_info,
            _drop_secrets,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=True,
    )


def path_without_query(path: str) -> str:
    """The request path as it may be logged: without its query string or fragment."""
    return path.partition("?")[0].partition("#")[0]


@dataclass(frozen=True, slots=True)
class AuditContext:
    decision_id: str
    request_id: str | None
    http_method: str
    path: str
    """The request's path; logged without its query string (`path_without_query`)."""


_audit = structlog.get_logger("mcp_authz.audit")


def log_decision(
    ctx: AuditContext,
    decision: Decision,
    *,
    grant: Grant | None,
    request: McpRequest | None,
    policy_name: str | None,
    policy_hash: str | None,
    duration_ms: float,
    fail_open: bool = False,
) -> None:
    extra: dict[str, Any] = {"fail_open": True} if fail_open else {}
    if decision.ticket is not None:
        extra["approval_id"] = decision.ticket.id
    _audit.info(
        "decision",
        decision_id=ctx.decision_id,
        request_id=ctx.request_id,
        http_method=ctx.http_method,
        path=path_without_query(ctx.path),
        grant_id=grant.id if grant else None,
        grant_label=grant.label if grant else None,
        method=request.method if request else None,
        tool=request.tool if request else None,
        arg_keys=sorted(request.arguments) if request else [],
        decision=decision.outcome.value,
        kind=decision.kind.value if decision.kind else None,
        rule=decision.rule,
        message=decision.message or None,
        retry_after=decision.retry_after,
        policy=policy_name,
        policy_hash=policy_hash,
        duration_ms=round(duration_ms, 3),
        **extra,
    )


def log_approval(
    action: str,
    approval: Approval,
    *,
    approver: str | None = None,
    decision_id: str | None = None,
) -> None:
    """One audit event per approval step: requested, approved, denied, used (keys only,
    and the arguments' HMAC under the server's digest key: never a plain hash of values).

    `approver` is the id the admin credential names; the approver's reason is logged (it is
    the approver's text, not the agent's), argument values never are.
    """
    _audit.info(
        "approval",
        action=action,
        approval_id=approval.id,
        status=approval.status.value,
        grant_id=approval.grant_id,
        grant_label=approval.grant_label,
        tool=approval.tool,
        arg_keys=list(approval.argument_keys),
        arguments_hmac=approval.arguments_hmac,
        policy=approval.policy,
        policy_hash=approval.policy_hash,
        rule=approval.rule,
        requested_at=approval.requested_at,
        expires_at=approval.expires_at,
        approver=approver if approver is not None else approval.decided_by,
        reason=approval.reason,
        decision_id=decision_id if decision_id is not None else approval.decision_id,
    )
