"""The check pipeline: auth → parse → policy engine → counters, for one HTTP request.

It knows nothing about protobuf (the Envoy edge builds an HttpRequest and renders the
Verdict) and nothing about which counter store it has. Any unexpected error becomes a
fail-closed denial.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from authz import engine
from authz.audit import AuditContext, log_decision
from authz.config import ConfigSource
from authz.counters.base import CounterStore
from authz.grants import bearer_token
from authz.mcp import McpParseError, check_mirror_headers, parse_message
from authz.model import Decision, DenyKind, Grant, McpRequest, RequestId
from authz.policy import Policy

log = structlog.get_logger("mcp_authz.service")

HEADER_MISMATCH = -32020
"""JSON-RPC code for Mcp-* headers that disagree with the body (as the MCP SDK uses)."""

BODYLESS_METHODS = frozenset({"GET", "DELETE"})
"""GET opens the server's SSE stream, DELETE ends a session: no body, grant still needed."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the sidecar knows about one HTTP request, independent of Envoy's messages."""

    method: str
    path: str
    headers: Mapping[str, str]
    """Lower-cased header names."""
    body: bytes
    partial_body: bool = False
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    decision: Decision
    decision_id: str
    grant: Grant | None = None
    request: McpRequest | None = None
    policy: Policy | None = None
    reply_id: RequestId = None
    """The id to echo when the body could not be parsed into a request."""


def new_decision_id() -> str:
    return secrets.token_hex(12)


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


class Authorizer:
    def __init__(
        self,
        config: ConfigSource,
        counters: CounterStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._counters = counters
        self._clock = clock

    async def check(self, http: HttpRequest) -> Verdict:
        started = time.perf_counter()
        decision_id = new_decision_id()
        try:
            verdict = await self._check(http, decision_id)
        except Exception:
            log.exception("check_failed", decision_id=decision_id)
            verdict = Verdict(
                Decision.deny(
                    DenyKind.UNAVAILABLE,
                    "the policy sidecar could not decide this request",
                    rule="(error)",
                ),
                decision_id,
            )
        log_decision(
            AuditContext(decision_id, http.request_id, http.method, http.path),
            verdict.decision,
            grant=verdict.grant,
            request=verdict.request,
            policy_name=verdict.grant.policy if verdict.grant else None,
            policy_hash=verdict.policy.content_hash if verdict.policy else None,
            duration_ms=(time.perf_counter() - started) * 1000,
        )
        return verdict

    async def _check(self, http: HttpRequest, decision_id: str) -> Verdict:
        config = self._config.current
        token = bearer_token(http.headers.get("authorization"))
        grant = config.grants.lookup(token) if token is not None else None
        if grant is None:
            message = "missing bearer token" if token is None else "unknown bearer token"
            return Verdict(
                Decision.deny(DenyKind.UNAUTHENTICATED, message, rule="(auth)"), decision_id
            )
        policy = config.policy(grant.policy)

        if http.method in BODYLESS_METHODS:
            if policy is None:
                return Verdict(_no_policy(grant), decision_id, grant, None, None)
            return Verdict(Decision.allow(), decision_id, grant, None, policy)
        if http.method != "POST":
            return Verdict(
                Decision.deny(
                    DenyKind.METHOD_NOT_ALLOWED,
                    f"HTTP method {http.method} is not allowed",
                    rule="(http)",
                ),
                decision_id,
                grant,
            )

        bad = self._bad_envelope(http)
        if bad is not None:
            return Verdict(bad, decision_id, grant)
        try:
            request = parse_message(http.body, session_id=http.headers.get("mcp-session-id"))
        except McpParseError as exc:
            return Verdict(
                Decision.deny(DenyKind.BAD_REQUEST, exc.message, rule="(parse)", rpc_code=exc.code),
                decision_id,
                grant,
                reply_id=exc.request_id,
            )
        mismatch = check_mirror_headers(request, http.headers)
        if mismatch is not None:
            return Verdict(
                Decision.deny(
                    DenyKind.BAD_REQUEST,
                    mismatch.message,
                    rule="(headers)",
                    rpc_code=HEADER_MISMATCH,
                ),
                decision_id,
                grant,
                request,
            )

        decision = engine.decide(policy, grant, request)
        if decision.allowed and decision.claims:
            try:
                result = await self._counters.reserve(decision.claims, self._clock())
            except Exception:
                log.exception("counter_store_failed", decision_id=decision_id)
                decision = Decision.deny(
                    DenyKind.UNAVAILABLE,
                    "quota state is unavailable; the call was not run",
                    rule="(counters)",
                )
            else:
                decision = engine.settle(decision, result)
        return Verdict(decision, decision_id, grant, request, policy)

    @staticmethod
    def _bad_envelope(http: HttpRequest) -> Decision | None:
        if http.partial_body:
            return Decision.deny(
                DenyKind.TOO_LARGE,
                "request body is larger than the sidecar accepts",
                rule="(body)",
            )
        encoding = http.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return Decision.deny(
                DenyKind.UNSUPPORTED_MEDIA,
                "compressed request bodies are not accepted (Content-Encoding)",
                rule="(body)",
            )
        if _media_type(http.headers.get("content-type")) != "application/json":
            return Decision.deny(
                DenyKind.UNSUPPORTED_MEDIA,
                "Content-Type must be application/json",
                rule="(body)",
            )
        return None


def _no_policy(grant: Grant) -> Decision:
    return Decision.deny(
        DenyKind.POLICY,
        f"policy {grant.policy!r} of grant {grant.id!r} is not loaded; everything is denied",
        rule="(no policy)",
    )
