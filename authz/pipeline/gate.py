"""The request phase: one request through HTTP shape → identity → parse → engine →
in-flight id → approval → counters, to a `Verdict` (`Authorizer.check`).

It knows nothing about protobuf (an edge builds the `HttpRequest` and renders the
`Verdict`: `authz.envoy`) and nothing about which stores it has. The decisions are the
engine's (`authz.engine`: decide → the stores → settle); the HTTP shape checks are in
`request.py`, the credential in `identity.py`. Any unexpected error becomes a fail-closed
denial.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from authz import engine
from authz.approvals.base import ApprovalRefused, ApprovalRequest, ApprovalStore
from authz.approvals.memory import MemoryApprovalStore
from authz.audit import AuditContext, log_approval, log_decision
from authz.config.source import ConfigSet, ConfigSource
from authz.counters.base import CounterStore
from authz.inflight.base import InflightStore, InflightStoreUnavailable, inflight_key
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
    JsonValue,
    McpRequest,
    RequestId,
    Reservation,
)
from authz.oauth.config import OAuthConfig
from authz.oauth.jwks import TokenVerifier
from authz.oauth.metadata import (
    insufficient_scope_challenge,
    invalid_token_challenge,
    missing_token_challenge,
)
from authz.pinning.drift import DriftWatch
from authz.pipeline.identity import identify, oauth_token
from authz.pipeline.parsing import ParsePool
from authz.pipeline.request import (
    BODYLESS_METHODS,
    HttpRequest,
    check_envelope,
    check_method,
    check_shape,
)
from authz.policy import Policy

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when tracing is configured
    from authz.tracing import DecisionTracer

__all__ = ["HEADER_MISMATCH", "Authorizer", "Verdict", "new_decision_id"]

log = structlog.get_logger("mcp_authz.pipeline")

HEADER_MISMATCH = -32020
"""JSON-RPC code for Mcp-* headers that disagree with the body (as the MCP SDK uses)."""


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
    pinned: bool = False
    """The configuration had a tool lock when the request was allowed."""
    challenge: str | None = None
    """The `WWW-Authenticate` value of a 401 or an INSUFFICIENT_SCOPE 403, computed from
    `oauth.json` (`authz.oauth.metadata`); None: the edge's own (no oauth.json)."""

    @property
    def hides(self) -> bool:
        """Whether the answers to this allowed request must be filtered: the grant's policy
        keeps something out of a listing, or compares its tools with the tool lock
        (`engine.filters_listings`). Envoy routes such requests to the `/mcp` route whose
        response phase fails closed."""
        return self.decision.allowed and engine.filters_listings(self.policy, pinned=self.pinned)


def new_decision_id() -> str:
    return secrets.token_hex(12)


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
        drift: DriftWatch | None = None,
        verifier: TokenVerifier | None = None,
        tracer: DecisionTracer | None = None,
    ) -> None:
        """`approvals` holds approvals of held calls (memory when None); `notify` is called
        (synchronously: it must only schedule work) once per new pending approval;
        `inflight` registers the ids of requests in flight per session (memory when None);
        `drift` is the tool lock's memory of drifted tools, shared with the response phase
        (its own when None); `verifier` checks OAuth tokens against their issuers' keys
        (its own when None); `tracer` opens a span per decision (`authz.tracing`; None: no
        tracing, at no cost)."""
        self._config = config
        self._tracer = tracer
        self.verifier = verifier if verifier is not None else TokenVerifier()
        self._drift = drift if drift is not None else DriftWatch()
        self._counters = counters
        self._inflight: InflightStore = inflight if inflight is not None else MemoryInflightStore()
        self._approvals: ApprovalStore = (
            approvals if approvals is not None else MemoryApprovalStore()
        )
        self._notify = notify
        self._clock = clock
        self._fail_open = fail_open
        self._metrics = metrics
        store_name = counters.describe().split(" ", 1)[0]
        self._store_seconds = (
            metrics.store_seconds.labels(store=store_name) if metrics is not None else None
        )
        self._store_errors = (
            metrics.store_errors.labels(store=store_name) if metrics is not None else None
        )
        self._parser = ParsePool()

    @property
    def traces(self) -> bool:
        """Whether decisions are traced (a span each)."""
        return self._tracer is not None

    async def check(self, http: HttpRequest) -> Verdict:
        started = time.perf_counter()
        decision_id = new_decision_id()
        tracer = self._tracer
        span = (
            tracer.start(http.trace_context or http.headers, http.method)
            if tracer is not None
            else None
        )
        try:
            # one snapshot of the configuration decides the request and shapes the answer
            config = self._config.current
            verdict = await self._check(http, decision_id, config)
            if verdict.decision.allowed and config.pins is not None:
                verdict = dataclasses.replace(verdict, pinned=True)
            elif not verdict.decision.allowed:
                challenge = _challenge(verdict.decision, config.oauth)
                if challenge is not None:
                    verdict = dataclasses.replace(verdict, challenge=challenge)
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
        trace_id = None
        if span is not None:
            assert tracer is not None
            trace_id = tracer.finish(
                span, verdict.decision, decision_id, verdict.grant, verdict.request
            )
        log_decision(
            AuditContext(decision_id, http.request_id, http.method, http.path, trace_id),
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

    async def _check(self, http: HttpRequest, decision_id: str, config: ConfigSet) -> Verdict:
        refused = check_shape(http)
        if refused is not None:
            return Verdict(refused, decision_id)
        token = oauth_token(config.grants, config.oauth, http)
        checked = None
        if token is not None:
            assert config.oauth is not None
            checked = await self.verifier.verify(config.oauth, token)
        identified = identify(config.grants, http, checked)
        if isinstance(identified, Decision):
            return Verdict(identified, decision_id)
        grant = identified
        policy = config.policy(grant.policy)
        refused = check_method(http)
        if refused is not None:
            return Verdict(refused, decision_id, grant)
        if http.method in BODYLESS_METHODS:
            return Verdict(engine.decide_stream(policy, grant), decision_id, grant, None, policy)
        refused = check_envelope(http)
        if refused is not None:
            return Verdict(refused, decision_id, grant)
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

        pins = self._drift.sync(config.pins)
        decision = engine.decide(policy, grant, request, pins, config.classes)
        if not decision.allowed:
            return Verdict(decision, decision_id, grant, request, policy)
        key = _inflight_key(request)
        if key is not None and decision.claims and decision.approval is None:
            return await self._admit(decision, decision_id, grant, request, policy, key)
        if key is not None:
            claimed = await self._claim_id(key, decision_id)
            if isinstance(claimed, Decision):
                return Verdict(claimed, decision_id, grant, request, policy)
            if not claimed:  # the store is down in fail-open mode: nothing registered
                key = None
        if decision.approval is not None:
            assert policy is not None
            verdict = await self._approval_gate(decision, decision_id, grant, request, policy)
        else:
            verdict = await self._limit(decision, decision_id, grant, request, policy)
        return await self._keep_id(verdict, key)

    async def _admit(
        self,
        decision: Decision,
        decision_id: str,
        grant: Grant,
        request: McpRequest,
        policy: Policy | None,
        key: str,
    ) -> Verdict:
        """An allowed tool call that takes quota, in a session: its id registered and its
        quota reserved in one step (`InflightStore.claim_reserving`: one round trip when
        both stores are in Redis), with the results of the two steps one after the other:
        the id in use → nothing reserved; exhausted → the id not kept."""
        started = time.perf_counter()
        try:
            result = await self._inflight.claim_reserving(
                key, decision_id, self._clock(), self._counters, decision.claims
            )
        except InflightStoreUnavailable as exc:
            refused = self._claim_failed(decision_id, exc)
            if refused is not None:
                return Verdict(refused, decision_id, grant, request, policy)
            # fail-open: unregistered, and the counters are asked on their own
            return await self._limit(decision, decision_id, grant, request, policy)
        except Exception as exc:  # the counters failed; the id is registered
            self._observe_store(started, failed=True)
            verdict = self._counters_failed(decision, decision_id, grant, request, policy, exc)
            return await self._keep_id(verdict, key)
        self._observe_store(started)
        if result is None:
            return Verdict(_id_in_use(), decision_id, grant, request, policy)
        settled = engine.settle(decision, result)
        kept = key if settled.allowed else None  # exhausted: the id was not kept
        return Verdict(settled, decision_id, grant, request, policy, inflight=kept)

    async def _claim_id(self, key: str, decision_id: str) -> Decision | bool:
        """Register the request's id as in flight in its session: True when registered;
        False when the store cannot answer in fail-open mode (nothing is registered); the
        denial of a request whose id collides with one in flight, or of a store that cannot
        answer."""
        try:
            claimed = await self._inflight.claim(key, decision_id, self._clock())
        except Exception as exc:
            refused = self._claim_failed(decision_id, exc)
            return False if refused is None else refused
        return True if claimed else _id_in_use()

    def _claim_failed(self, decision_id: str, exc: Exception) -> Decision | None:
        """The in-flight store could not answer: the denial, or None in fail-open mode."""
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
                return self._counters_failed(decision, decision_id, grant, request, policy, exc)
            decision = engine.settle(decision, result)
        return Verdict(decision, decision_id, grant, request, policy)

    def _counters_failed(
        self,
        decision: Decision,
        decision_id: str,
        grant: Grant,
        request: McpRequest,
        policy: Policy | None,
        exc: Exception,
    ) -> Verdict:
        """The counter store could not answer: allowed without quota in fail-open mode,
        else denied."""
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
        denial = Decision.deny(
            DenyKind.UNAVAILABLE,
            "quota state is unavailable, so the call was not run; retry shortly",
            rule=FixedRule.COUNTERS,
            retry_after=1,
        )
        return Verdict(denial, decision_id, grant, request, policy)

    async def _approval_gate(
        self,
        decision: Decision,
        decision_id: str,
        grant: Grant,
        request: McpRequest,
        policy: Policy,
    ) -> Verdict:
        """A call (or a `prompts/get`, a `resources/read`) that needs a person's approval:
        hold it, deny it, or run it once. The approval names what it holds as its `tool`:
        the tool, or `prompts/get <name>`, `resources/read <uri>` (`requirement.target`).

        Quota is taken only for a call that will run (approved), and the approval is used
        only once the quota is taken: a rate-limited retry keeps its approval. Two identical
        approved calls racing: the one whose `consume` loses gives its quota back and is
        held again, under a new approval.
        """
        requirement = decision.approval
        assert requirement is not None
        tool = requirement.target or request.tool
        assert tool is not None
        ask = ApprovalRequest(
            grant_id=grant.id,
            grant_label=grant.label,
            policy=grant.policy,
            policy_hash=policy.content_hash,
            tool=tool,
            arguments=_held_arguments(request),
            rule=requirement.rule,
            ttl_seconds=requirement.ttl_seconds,
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
            judged = engine.judge_approval(decision, tool, approval)
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
            result = await self._counters.reserve(decision.claims, self._clock())
        except Exception:
            self._observe_store(started, failed=True)
            raise
        self._observe_store(started)
        return result

    def _observe_store(self, started: float, *, failed: bool = False) -> None:
        """The counter store's time (and an error) in the metrics."""
        if self._store_seconds is not None:
            self._store_seconds.observe(time.perf_counter() - started)
        if failed and self._store_errors is not None:
            self._store_errors.inc()


def _challenge(decision: Decision, oauth: OAuthConfig | None) -> str | None:
    """The `WWW-Authenticate` value of a denial: for a 401 with oauth.json, the challenge
    that sends a client to the protected resource metadata; for INSUFFICIENT_SCOPE, the
    scopes the call needs. None for any other denial, and for a 401 without oauth.json."""
    if decision.kind is DenyKind.INSUFFICIENT_SCOPE:
        return insufficient_scope_challenge(oauth, decision.scopes)
    if oauth is None:
        return None
    if decision.kind is DenyKind.UNAUTHENTICATED:
        return missing_token_challenge(oauth)
    if decision.kind is DenyKind.INVALID_TOKEN:
        return invalid_token_challenge(oauth)
    return None


def _inflight_key(request: McpRequest) -> str | None:
    """The in-flight registry key of a request that has one: an id and a session, and not
    an answer to a server request (not ours to track)."""
    if request.is_notification or request.id is None or request.session_id is None:
        return None
    if request.method == RESPONSE_METHOD:
        return None
    return inflight_key(request.session_id, request.id)


def _held_arguments(request: McpRequest) -> Mapping[str, JsonValue]:
    """What an approval binds besides its `tool`: a tool's or a prompt's arguments, or a
    resource's whole URI (`{"uri": ...}`: the `tool` shows it cut when it is long)."""
    if request.resource is not None and not request.is_tool_call:
        return {"uri": request.resource}
    return request.arguments


def _id_in_use() -> Decision:
    return Decision.deny(
        DenyKind.BAD_REQUEST,
        "invalid request: this id is already used by a request still in flight in "
        'this session (the server compares ids as text: 7 and "7" are the same id); '
        "send it with a new id",
        rule=FixedRule.ID_IN_USE,
        rpc_code=INVALID_REQUEST,
    )


def _approvals_unavailable() -> Decision:
    return Decision.deny(
        DenyKind.UNAVAILABLE,
        "approval state is unavailable, so the call was not run; retry shortly",
        rule=FixedRule.APPROVALS,
        retry_after=1,
    )
