"""The check pipeline: HTTP shape → auth → parse → policy engine → counters, for one request.

It knows nothing about protobuf (the Envoy edge builds an HttpRequest and renders the
Verdict) and nothing about which counter store it has. Any unexpected error becomes a
fail-closed denial.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from authz import engine
from authz.approvals.base import ApprovalRefused, ApprovalRequest, ApprovalStore
from authz.approvals.memory import MemoryApprovalStore
from authz.audit import AuditContext, log_approval, log_decision
from authz.config.grants import GrantTable, bearer_token
from authz.config.source import ConfigSource
from authz.counters.base import CounterStore
from authz.inflight.base import InflightStore, inflight_key
from authz.inflight.memory import MemoryInflightStore
from authz.mcp import INVALID_REQUEST, RESPONSE_METHOD, McpParseError, check_mirror_headers
from authz.metrics import Metrics
from authz.model import (
    Approval,
    Decision,
    DenyKind,
    Exhausted,
    FixedRule,
    Grant,
    McpRequest,
    RequestId,
    Reservation,
)
from authz.parsing import ParsePool
from authz.policy import Policy

log = structlog.get_logger("mcp_authz.service")

HEADER_MISMATCH = -32020
"""JSON-RPC code for Mcp-* headers that disagree with the body (as the MCP SDK uses)."""

BODYLESS_METHODS = frozenset({"GET", "DELETE"})
"""GET opens the server's SSE stream, DELETE ends a session: no body, grant still needed."""

MCP_PATH = "/mcp"
"""The one endpoint path the sidecar allows (plus an optional query string). Envoy has
already normalised the path (dot segments, merged slashes, decoded unreserved escapes;
escaped slashes are rejected), so the comparison is exact."""

METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-method-override", "x-http-method")
"""Headers some frameworks use to change the HTTP method: the method is what was sent."""

QUERY_CREDENTIAL_NAMES = frozenset(
    {
        "access_token",
        "token",
        "id_token",
        "refresh_token",
        "auth",
        "auth_token",
        "authorization",
        "bearer",
        "bearer_token",
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "client_secret",
    }
)
"""Query parameters that carry credentials. Tokens in URLs end up in logs and histories;
a request with one is refused (400), whether or not the token is valid."""

JWT_PAYLOAD_KEY = "jwt_payload"
"""The key under which Envoy's jwt_authn filter stores a verified JWT's claims: every
provider must set `payload_in_metadata: jwt_payload` (see deploy/envoy-mesh.yaml)."""

_SESSION_ID = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,256}")
"""`Mcp-Session-Id`: visible ASCII (MCP spec) without a comma, because Envoy joins repeated
headers with a comma and the upstream would read only one of them."""


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
    source_principal: str | None = None
    """The peer's identity as Envoy verified it on an mTLS listener
    (`attributes.source.principal`: the client certificate's first URI SAN, e.g. a SPIFFE
    ID). None without a client certificate. Never taken from a header."""
    jwt_metadata: Mapping[str, Any] | None = None
    """The dynamic metadata Envoy's jwt_authn filter wrote for this request (namespace
    `envoy.filters.http.jwt_authn`, sent in `attributes.metadata_context`), as plain JSON
    values; None when no JWT was verified. Never taken from a header."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the pipeline concluded about one request: everything an edge needs to answer
    Envoy, and nothing of Envoy's own messages.

    `decision` is the answer (allowed, or a denial with its kind, rule and message);
    `decision_id` names it in the audit log and in the headers and metadata Envoy passes
    on. `grant`, `request` and `policy` are set as far as the pipeline got: the caller's
    grant once identified, the parsed request once its body parsed, the grant's policy.
    Every edge renders a denied verdict the same way (`authz.envoy.denial`) and an allowed
    one as its transport's "ok" with the grant, the decision id and the response phase's
    metadata (`hides`, `inflight`, `decision.reservation`).
    """

    decision: Decision
    decision_id: str
    grant: Grant | None = None
    request: McpRequest | None = None
    policy: Policy | None = None
    fail_open: bool = False
    """Allowed without quota because the counter store could not answer (fail-open mode)."""
    reply_id: RequestId = None
    """The id to echo when the body could not be parsed into a request."""
    inflight: str | None = None
    """The in-flight registry key the allowed request holds (`authz.inflight`); the response
    phase frees it when the response ends."""

    @property
    def hides(self) -> bool:
        """Whether the answers to this allowed request must be filtered: the grant's policy
        hides tools (`engine.hides_tools`). Envoy routes such requests to the `/mcp` route
        whose response phase fails closed."""
        return self.decision.allowed and engine.hides_tools(self.policy)


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
        *,
        fail_open: bool = False,
        metrics: Metrics | None = None,
        approvals: ApprovalStore | None = None,
        notify: Callable[[Approval], None] | None = None,
        inflight: InflightStore | None = None,
    ) -> None:
        """`approvals` holds approvals of held calls (memory when None); `notify` is called
        (synchronously: it must only schedule work) once per new pending approval;
        `inflight` registers the ids of requests in flight per session (memory when None)."""
        self._config = config
        self._counters = counters
        self._inflight: InflightStore = inflight if inflight is not None else MemoryInflightStore()
        self._approvals: ApprovalStore = (
            approvals if approvals is not None else MemoryApprovalStore()
        )
        self._notify = notify
        self._clock = clock
        self._fail_open = fail_open
        self._metrics = metrics
        self._store_name = counters.describe().split(" ", 1)[0]
        self._parser = ParsePool()

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
                    rule=FixedRule.ERROR,
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
            fail_open=verdict.fail_open,
        )
        if self._metrics is not None:
            self._metrics.observe_decision(
                verdict.decision,
                tool=verdict.request.tool if verdict.request else None,
                policy=verdict.policy,
                seconds=time.perf_counter() - started,
            )
        return verdict

    async def _check(self, http: HttpRequest, decision_id: str) -> Verdict:
        config = self._config.current
        refused = _bad_http(http)
        if refused is not None:
            return Verdict(refused, decision_id)
        identified = identify(config.grants, http)
        if isinstance(identified, Decision):
            return Verdict(identified, decision_id)
        grant = identified
        policy = config.policy(grant.policy)

        if http.method in BODYLESS_METHODS:
            if http.body:
                return Verdict(
                    Decision.deny(
                        DenyKind.BAD_REQUEST,
                        f"a {http.method} request must not carry a body",
                        rule=FixedRule.BODY,
                        rpc_code=INVALID_REQUEST,
                    ),
                    decision_id,
                    grant,
                )
            return Verdict(engine.decide_stream(policy, grant), decision_id, grant, None, policy)
        if http.method != "POST":
            return Verdict(
                Decision.deny(
                    DenyKind.METHOD_NOT_ALLOWED,
                    f"HTTP method {http.method} is not allowed",
                    rule=FixedRule.HTTP,
                ),
                decision_id,
                grant,
            )

        bad = self._bad_envelope(http)
        if bad is not None:
            return Verdict(bad, decision_id, grant)
        try:
            request = await self._parser.parse(
                http.body, session_id=http.headers.get("mcp-session-id"), grant_id=grant.id
            )
        except McpParseError as exc:
            return Verdict(
                Decision.deny(
                    DenyKind.BAD_REQUEST, exc.message, rule=FixedRule.PARSE, rpc_code=exc.code
                ),
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
                    rule=FixedRule.HEADERS,
                    rpc_code=HEADER_MISMATCH,
                ),
                decision_id,
                grant,
                request,
            )

        decision = engine.decide(policy, grant, request)
        key: str | None = None
        if decision.allowed:
            claimed = await self._claim_id(request, decision_id)
            if isinstance(claimed, Decision):
                return Verdict(claimed, decision_id, grant, request, policy)
            key = claimed
        if decision.allowed and decision.approval is not None:
            assert policy is not None
            verdict = await self._approval_gate(decision, decision_id, grant, request, policy)
        else:
            verdict = await self._limit(decision, decision_id, grant, request, policy)
        return await self._keep_id(verdict, key)

    async def _claim_id(self, request: McpRequest, decision_id: str) -> Decision | str | None:
        """Register the request's id as in flight in its session (the key), or the denial of
        a request whose id collides with one in flight; None when nothing is registered
        (no id, no session, or the store is down in fail-open mode)."""
        if request.is_notification or request.id is None or request.session_id is None:
            return None
        if request.method == RESPONSE_METHOD:  # answers a server request: not ours to track
            return None
        key = inflight_key(request.session_id, request.id)
        try:
            claimed = await self._inflight.claim(key, decision_id, self._clock())
        except Exception as exc:
            log.warning(
                "inflight_store_failed",
                decision_id=decision_id,
                error=type(exc).__name__,
                fail_open=self._fail_open,
            )
            if self._fail_open:
                return None
            return Decision.deny(
                DenyKind.UNAVAILABLE,
                "request id state is unavailable, so the request was not run; retry shortly",
                rule=FixedRule.INFLIGHT,
                retry_after=1,
            )
        if not claimed:
            return Decision.deny(
                DenyKind.BAD_REQUEST,
                "invalid request: this id is already used by a request still in flight in "
                'this session (the server compares ids as text: 7 and "7" are the same id); '
                "send it with a new id",
                rule=FixedRule.ID_IN_USE,
                rpc_code=INVALID_REQUEST,
            )
        return key

    async def _keep_id(self, verdict: Verdict, key: str | None) -> Verdict:
        """An allowed request keeps its registered id until its response ends; a denied one
        never reaches the server, so its id is free again at once."""
        if key is None:
            return verdict
        if verdict.decision.allowed:
            return dataclasses.replace(verdict, inflight=key)
        try:
            await self._inflight.release(key, verdict.decision_id)
        except Exception as exc:  # the entry expires on its own
            log.warning("inflight_release_failed", error=type(exc).__name__)
        return verdict

    async def _limit(
        self,
        decision: Decision,
        decision_id: str,
        grant: Grant,
        request: McpRequest,
        policy: Policy | None,
    ) -> Verdict:
        """Reserve the quota an allowed decision claims; the final Verdict."""
        if decision.allowed and decision.claims:
            try:
                result = await self._reserve(decision)
            except Exception as exc:
                log.warning(
                    "counter_store_failed",
                    decision_id=decision_id,
                    error=type(exc).__name__,
                    fail_open=self._fail_open,
                )
                if self._fail_open:
                    return Verdict(
                        dataclasses.replace(
                            decision, rule=FixedRule.COUNTERS_FAIL_OPEN, claims=(), reservation=None
                        ),
                        decision_id,
                        grant,
                        request,
                        policy,
                        fail_open=True,
                    )
                decision = Decision.deny(
                    DenyKind.UNAVAILABLE,
                    "quota state is unavailable, so the call was not run; retry shortly",
                    rule=FixedRule.COUNTERS,
                    retry_after=1,
                )
            else:
                decision = engine.settle(decision, result)
        return Verdict(decision, decision_id, grant, request, policy)

    async def _approval_gate(
        self,
        decision: Decision,
        decision_id: str,
        grant: Grant,
        request: McpRequest,
        policy: Policy,
    ) -> Verdict:
        """A call that needs a person's approval: hold it, deny it, or run it once.

        Quota is taken only for a call that will run (approved), and the approval is used
        only once the quota is taken: a rate-limited retry keeps its approval. Two identical
        approved calls racing: the one whose `consume` loses gives its quota back and is
        held again, under a new approval.
        """
        assert decision.approval is not None and request.tool is not None
        ask = ApprovalRequest(
            grant_id=grant.id,
            grant_label=grant.label,
            policy=grant.policy,
            policy_hash=policy.content_hash,
            tool=request.tool,
            arguments=request.arguments,
            rule=decision.approval.rule,
            ttl_seconds=decision.approval.ttl_seconds,
            decision_id=decision_id,
        )
        for _attempt in range(2):
            try:
                approval = await self._request_approval(ask)
            except ApprovalRefused as refused:  # the grant's cap, or arguments too large
                self._observe_approval("refused")
                denial = Decision.deny(DenyKind.POLICY, refused.message, rule=refused.rule)
                return Verdict(denial, decision_id, grant, request, policy)
            except Exception as exc:
                log.warning(
                    "approval_store_failed", decision_id=decision_id, error=type(exc).__name__
                )
                self._observe_approval("unavailable")
                return Verdict(_approvals_unavailable(), decision_id, grant, request, policy)
            judged = engine.judge_approval(decision, request.tool, approval)
            if not judged.allowed:
                self._observe_approval(
                    "held" if judged.kind is DenyKind.APPROVAL_REQUIRED else "refused"
                )
                return Verdict(judged, decision_id, grant, request, policy)
            verdict = await self._limit(judged, decision_id, grant, request, policy)
            if not verdict.decision.allowed:
                return verdict  # rate-limited or unavailable: the approval stays unused
            try:
                used = await self._approvals.consume(approval.id, ask.binding, self._clock())
            except Exception as exc:
                log.warning(
                    "approval_store_failed", decision_id=decision_id, error=type(exc).__name__
                )
                await self._give_back(verdict.decision.reservation)
                return Verdict(_approvals_unavailable(), decision_id, grant, request, policy)
            if used:
                log_approval("used", approval, decision_id=decision_id)
                self._observe_approval("used")
                return verdict
            await self._give_back(verdict.decision.reservation)  # lost the race: hold again
        return Verdict(_approvals_unavailable(), decision_id, grant, request, policy)

    async def _request_approval(self, ask: ApprovalRequest) -> Approval:
        approval, created = await self._approvals.request(ask, self._clock())
        if created:
            log_approval("requested", approval)
            self._observe_approval("requested")
            if self._notify is not None:
                try:
                    self._notify(approval)
                except Exception:  # a notification never decides a call
                    log.exception("approval_notify_failed", approval_id=approval.id)
        return approval

    async def _give_back(self, reservation: Reservation | None) -> None:
        if reservation is None or not reservation.entries:
            return
        try:
            await self._counters.release(reservation)
        except Exception as exc:  # the quota is lost until the window ends (errs on the limit)
            log.warning("counter_release_failed", error=type(exc).__name__)

    def _observe_approval(self, action: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_approval(action)

    async def _reserve(self, decision: Decision) -> Reservation | Exhausted:
        started = time.perf_counter()
        try:
            return await self._counters.reserve(decision.claims, self._clock())
        except Exception:
            if self._metrics is not None:
                self._metrics.store_errors.labels(store=self._store_name).inc()
            raise
        finally:
            if self._metrics is not None:
                self._metrics.store_seconds.labels(store=self._store_name).observe(
                    time.perf_counter() - started
                )

    @staticmethod
    def _bad_envelope(http: HttpRequest) -> Decision | None:
        if http.partial_body:
            return Decision.deny(
                DenyKind.TOO_LARGE,
                "request body is larger than the sidecar accepts (it arrived truncated); "
                "the call was not run",
                rule=FixedRule.BODY,
            )
        encoding = http.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return Decision.deny(
                DenyKind.UNSUPPORTED_MEDIA,
                "compressed request bodies are not accepted (Content-Encoding)",
                rule=FixedRule.BODY,
            )
        content_type = http.headers.get("content-type")
        if _media_type(content_type) != "application/json" or not _utf8_charset(content_type):
            return Decision.deny(
                DenyKind.UNSUPPORTED_MEDIA,
                "Content-Type must be application/json (charset, if given, utf-8)",
                rule=FixedRule.BODY,
            )
        return None


def _approvals_unavailable() -> Decision:
    return Decision.deny(
        DenyKind.UNAVAILABLE,
        "approval state is unavailable, so the call was not run; retry shortly",
        rule=FixedRule.APPROVALS,
        retry_after=1,
    )


def _utf8_charset(value: str | None) -> bool:
    """False when the Content-Type names a charset other than UTF-8 (the body is read as UTF-8)."""
    for parameter in (value or "").split(";")[1:]:
        name, _, raw = parameter.partition("=")
        if name.strip().lower() == "charset" and raw.strip().strip('"').lower() != "utf-8":
            return False
    return True


def _query_names(query: str) -> list[str]:
    """Parameter names of a query string, decoded and lower-cased; `;` separates too."""
    names = []
    for part in re.split(r"[&;]", query):
        name = part.partition("=")[0]
        names.append(urllib.parse.unquote_plus(name).strip().lower())
    return names


def _bad_http(http: HttpRequest) -> Decision | None:
    """HTTP-level refusals, before the caller is identified: path, overrides, URL tokens."""
    path, _, query = http.path.partition("?")
    if path != MCP_PATH:
        return Decision.deny(
            DenyKind.NOT_FOUND,
            f"not found: the MCP endpoint is {MCP_PATH}",
            rule=FixedRule.PATH,
            rpc_code=INVALID_REQUEST,
        )
    for header in METHOD_OVERRIDE_HEADERS:
        if header in http.headers:
            return Decision.deny(
                DenyKind.BAD_REQUEST,
                "HTTP method override headers are not accepted",
                rule=FixedRule.HTTP,
                rpc_code=INVALID_REQUEST,
            )
    if any(name in QUERY_CREDENTIAL_NAMES for name in _query_names(query)):
        return Decision.deny(
            DenyKind.BAD_REQUEST,
            "credentials in the URL are not accepted; use the Authorization header",
            rule=FixedRule.HTTP,
            rpc_code=INVALID_REQUEST,
        )
    session = http.headers.get("mcp-session-id")
    if session is not None and _SESSION_ID.fullmatch(session) is None:
        return Decision.deny(
            DenyKind.BAD_REQUEST,
            "Mcp-Session-Id must be one value of visible ASCII characters",
            rule=FixedRule.HEADERS,
            rpc_code=INVALID_REQUEST,
        )
    return None


def _unauthenticated(message: str, kind: DenyKind = DenyKind.UNAUTHENTICATED) -> Decision:
    return Decision.deny(kind, message, rule=FixedRule.AUTH)


def identify(grants: GrantTable, http: HttpRequest) -> Grant | Decision:
    """The caller's grant, or a 401 denial. Exactly one credential is looked at:

    1. a JWT verified by Envoy's jwt_authn filter (its claims in `http.jwt_metadata`): it
       names the end user or agent. The `Authorization` header is then ignored: it carried
       that JWT (jwt_authn reads it from there).
    2. otherwise an `Authorization` header: it must be one well-formed bearer token of a
       token grant.
    3. otherwise the verified peer certificate's identity (`http.source_principal`, e.g. a
       SPIFFE ID): it names the workload, shared by everything that runs in it.

    A credential that is present but names no grant is a 401: the request never falls back
    to the next one (a bad token with a good client certificate is still a 401). Nothing is
    ever read from client-supplied headers other than `Authorization`.
    """
    if http.jwt_metadata is not None:
        payload = http.jwt_metadata.get(JWT_PAYLOAD_KEY)
        if not isinstance(payload, Mapping):
            log.warning("jwt_payload_missing", namespace_keys=sorted(http.jwt_metadata))
            return _unauthenticated(
                "a JWT was verified but its claims are not in the jwt_authn metadata "
                f"({JWT_PAYLOAD_KEY!r}): the proxy is misconfigured"
            )
        grant = grants.lookup_jwt(payload)
        if grant is None:
            return _unauthenticated(
                "unknown JWT identity: no grant matches its claims", DenyKind.INVALID_TOKEN
            )
        return grant
    authorization = http.headers.get("authorization")
    if authorization is not None:
        token = bearer_token(authorization)
        if token is None:
            return _unauthenticated("missing bearer token")
        grant = grants.lookup(token)
        if grant is None:
            return _unauthenticated("unknown bearer token", DenyKind.INVALID_TOKEN)
        return grant
    if http.source_principal:
        grant = grants.lookup_spiffe(http.source_principal)
        if grant is None:
            return _unauthenticated("no grant for the client certificate's identity")
        return grant
    return _unauthenticated("missing bearer token")
