"""Envoy ext_authz over gRPC (authz/envoy/grpc_authz.py): CheckRequest → HttpRequest (the
identity Envoy verified, never a header), and an allowed Verdict → CheckResponse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.service.auth.v3 import external_auth_pb2
from authz._pb.envoy.type.v3 import http_status_pb2
from authz._pb.google.rpc import status_pb2
from authz.envoy.denial import (
    DECISION_HEADER,
    STATELESS_VERSION_KEY,
    UNAUTHENTICATED_KINDS,
    denial,
)
from authz.envoy.grpc_authz import (
    FAIL_OPEN_HEADER,
    GRANT_HEADER,
    JWT_AUTHN_NAMESPACE,
    check_response,
    check_response_bytes,
    http_request_from_check,
)
from authz.model import (
    ApprovalTicket,
    Decision,
    DenyKind,
    FixedRule,
    Grant,
    McpRequest,
    Outcome,
    Reservation,
)
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from authz.policy import load_policy
from tests.unit.calls import ISSUER, PAINTER, mesh_check, post, tool_call


async def test_allowed_response_strips_authorization_and_sets_grant(authorizer: Authorizer) -> None:
    verdict = await post(authorizer, tool_call())
    response = check_response(verdict)
    assert response.status.code == 0
    ok = response.ok_response
    assert "authorization" in ok.headers_to_remove
    added = {h.header.key: h.header.value for h in ok.headers}
    assert added["x-mcp-grant"] == "g1"
    assert added["x-mcp-authz-decision-id"] == verdict.decision_id
    assert response.dynamic_metadata.fields["grant_id"].string_value == "g1"


def test_check_request_to_http_request() -> None:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method = "POST"
    http.path = "/mcp?x=1"
    http.headers["Content-Type"] = "application/json"
    http.headers["x-envoy-auth-partial-body"] = "true"
    http.headers["x-request-id"] = "rid-1"
    http.raw_body = b'{"a":1}'
    request = http_request_from_check(check)
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.body == b'{"a":1}'
    assert request.partial_body is True
    assert request.request_id == "rid-1"


def test_headers_are_read_where_envoy_put_them() -> None:
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.headers.update({"content-type": "application/json", ":path": "/mcp", "x-a": "1"})
    headers = http_request_from_check(check).headers
    assert not isinstance(headers, dict)  # a view of Envoy's map, not a copy
    assert headers.get("content-type") == "application/json"
    assert headers["x-a"] == "1" and "x-a" in headers and 1 not in headers
    assert headers.get("x-missing") is None and "x-missing" not in headers
    with pytest.raises(KeyError):
        headers["x-missing"]
    assert "x-missing" not in http.headers  # looking it up added nothing to the message
    assert dict(headers) == dict(http.headers) and len(headers) == 3


def test_header_names_not_in_lower_case_are_lower_cased() -> None:
    check = external_auth_pb2.CheckRequest()
    check.attributes.request.http.headers.update({"Mcp-Session-Id": "s", "x-a": "1"})
    assert http_request_from_check(check).headers == {"mcp-session-id": "s", "x-a": "1"}


def test_check_request_identity_fields() -> None:
    payload = {"iss": ISSUER, "sub": "alice", "aud": ["a", "b"], "exp": 2e9, "n": 2, "ok": True}
    check = mesh_check(
        PAINTER,
        {
            JWT_AUTHN_NAMESPACE: {JWT_PAYLOAD_KEY: payload},
            "envoy.filters.http.mcp": {"method": "tools/call"},
        },
    )
    request = http_request_from_check(check)
    assert request.source_principal == PAINTER
    assert request.jwt_metadata == {JWT_PAYLOAD_KEY: {**payload, "n": 2.0}}

    plain = http_request_from_check(
        mesh_check(namespaces={"envoy.filters.http.mcp": {"method": "tools/call"}})
    )
    assert plain.source_principal is None and plain.jwt_metadata is None


async def test_check_request_identity_is_never_taken_from_headers(
    mesh_authorizer: Authorizer,
) -> None:
    forged = {
        "x-forwarded-client-cert": f"URI={PAINTER}",
        "x-spiffe-id": PAINTER,
        "x-jwt-payload": json.dumps({"iss": ISSUER, "sub": "alice"}),
        JWT_AUTHN_NAMESPACE: json.dumps({JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice"}}),
    }
    request = http_request_from_check(mesh_check(**forged))
    assert request.source_principal is None and request.jwt_metadata is None
    verdict = await mesh_authorizer.check(request)
    assert check_response(verdict).denied_response.status.code == 401


@pytest.mark.parametrize(
    ("principal", "namespaces", "authorization", "grant_id"),
    [
        (PAINTER, None, None, "painter"),
        (
            PAINTER,
            {JWT_AUTHN_NAMESPACE: {JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice"}}},
            "Bearer some.jwt.value",
            "alice",
        ),
        (PAINTER, None, "Bearer tok", "tok"),
    ],
)
async def test_allowed_mesh_identity_renders_like_a_token(
    mesh_authorizer: Authorizer,
    principal: str,
    namespaces: dict[str, dict[str, Any]] | None,
    authorization: str | None,
    grant_id: str,
) -> None:
    headers = {"authorization": authorization} if authorization else {}
    verdict = await mesh_authorizer.check(
        http_request_from_check(mesh_check(principal, namespaces, **headers))
    )
    response = check_response(verdict)
    assert response.status.code == 0, verdict.decision
    ok = response.ok_response
    assert "authorization" in ok.headers_to_remove
    added = {h.header.key: h.header.value for h in ok.headers}
    assert added["x-mcp-grant"] == grant_id
    assert response.dynamic_metadata.fields["grant_id"].string_value == grant_id


# -- the answer's bytes against the message the generated classes build ---------------------


def _reference_header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _reference_metadata(verdict: Verdict) -> struct_pb2.Struct:
    meta = struct_pb2.Struct()
    fields = meta.fields
    decision = verdict.decision
    fields["decision_id"].string_value = verdict.decision_id
    fields["decision"].string_value = decision.outcome.value
    if decision.rule:
        fields["rule"].string_value = decision.rule
    if decision.ticket is not None:
        fields["approval_id"].string_value = decision.ticket.id
    if verdict.grant is not None:
        fields["grant_id"].string_value = verdict.grant.id
        fields["policy"].string_value = verdict.grant.policy
    if verdict.hides:
        fields["hides"].bool_value = True
    if verdict.inflight is not None:
        fields["inflight"].string_value = verdict.inflight
    request = verdict.request
    if request is not None:
        fields["mcp_method"].string_value = request.method
        if request.tool is not None:
            fields["tool"].string_value = request.tool
        if not request.is_notification and request.id is not None:
            fields["jsonrpc_id"].string_value = json.dumps(request.id, separators=(",", ":"))
    reservation = decision.reservation
    if decision.allowed and reservation is not None and reservation.token:
        taken = fields["reservation"].struct_value.fields
        taken["token"].string_value = reservation.token
        entries = taken["entries"].list_value
        for (counter, scope, scope_key, window), start, cost in reservation.entries:
            entry = entries.values.add().struct_value.fields
            entry["counter"].string_value = counter
            entry["scope"].string_value = scope
            entry["key"].string_value = scope_key
            entry["window"].number_value = window
            entry["start"].number_value = start
            entry["cost"].number_value = cost
    return meta


def reference_response(verdict: Verdict) -> external_auth_pb2.CheckResponse:
    """The CheckResponse built field by field with the generated classes."""
    if verdict.decision.allowed:
        assert verdict.grant is not None
        response_headers = [_reference_header(DECISION_HEADER, verdict.decision_id)]
        if verdict.fail_open:
            response_headers.append(_reference_header(FAIL_OPEN_HEADER, "true"))
        ok = external_auth_pb2.OkHttpResponse(
            headers=[
                _reference_header(GRANT_HEADER, verdict.grant.id),
                _reference_header(DECISION_HEADER, verdict.decision_id),
            ],
            headers_to_remove=["authorization", FAIL_OPEN_HEADER],
            response_headers_to_add=response_headers,
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=0),
            ok_response=ok,
            dynamic_metadata=_reference_metadata(verdict),
        )
    rendered = denial(verdict)
    code = 16 if verdict.decision.kind in UNAUTHENTICATED_KINDS else 7
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=rendered.status),  # type: ignore[arg-type]
        headers=[_reference_header(k, v) for k, v in rendered.headers],
        body=rendered.body,
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code, message=verdict.decision.message),
        denied_response=denied,
        dynamic_metadata=_reference_metadata(verdict),
    )


HIDING = load_policy({"version": "1", "default": "allow", "hide": ["secret.tool"]}, name="h")
PLAIN = load_policy({"version": "1", "default": "allow"}, name="p")

texts = st.text(max_size=40)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=300)
ids = st.one_of(st.none(), st.integers(-(2**70), 2**70), texts)
buckets = st.tuples(
    names, st.sampled_from(["grant", "session", "global"]), names, st.integers(1, 10**7)
)
reservations = st.builds(
    Reservation,
    entries=st.lists(
        st.tuples(buckets, st.integers(0, 2**40), st.integers(0, 10**6)), max_size=4
    ).map(tuple),
    token=st.one_of(st.just(""), st.text("0123456789abcdef", min_size=32, max_size=32)),
)
tickets = st.builds(ApprovalTicket, id=names, status=texts, expires_at=st.floats(0, 2e9))
requests = st.builds(
    McpRequest,
    method=st.sampled_from(["tools/call", "tools/list", "ping", "notifications/initialized"]),
    id=ids,
    is_notification=st.booleans(),
    params=st.sampled_from([{}, {"_meta": {STATELESS_VERSION_KEY: "2026-07-28"}}]),
    tool=st.one_of(st.none(), names),
)
decisions = st.one_of(
    st.builds(
        Decision,
        outcome=st.just(Outcome.ALLOW),
        rule=st.one_of(st.none(), texts, st.sampled_from(list(FixedRule))),
        reservation=st.one_of(st.none(), reservations),
        ticket=st.one_of(st.none(), tickets),
    ),
    st.builds(
        Decision,
        outcome=st.just(Outcome.DENY),
        rule=st.one_of(st.none(), texts, st.sampled_from(list(FixedRule))),
        message=texts,
        kind=st.sampled_from(list(DenyKind)),
        retry_after=st.one_of(st.none(), st.integers(0, 10**6)),
        rpc_code=st.one_of(st.none(), st.sampled_from([-32700, -32600, -32601, -32602, -32020])),
        ticket=st.one_of(st.none(), tickets),
    ),
)


@st.composite
def verdicts(draw: st.DrawFn) -> Verdict:
    decision = draw(decisions)
    grant = draw(st.builds(Grant, id=names, label=texts, policy=names))
    return Verdict(
        decision,
        draw(st.text("0123456789abcdef", min_size=24, max_size=24)),
        grant=grant if decision.allowed else draw(st.one_of(st.none(), st.just(grant))),
        request=draw(st.one_of(st.none(), requests)),
        policy=draw(st.sampled_from([None, HIDING, PLAIN])),
        fail_open=draw(st.booleans()),
        reply_id=draw(ids),
        inflight=draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=64, max_size=64))),
    )


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(verdicts())
def test_answers_are_the_bytes_the_generated_classes_write(verdict: Verdict) -> None:
    # twice: the second answer is made of the pieces the first one cached
    for _ in range(2):
        sent = check_response_bytes(verdict)
        assert sent == reference_response(verdict).SerializeToString(deterministic=True)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.lists(st.tuples(buckets, st.integers(0, 2**40), st.integers(0, 10**6)), max_size=3),
    st.lists(st.text(min_size=1, max_size=300), min_size=2, max_size=6),
)
def test_reservations_of_the_same_buckets_with_other_tokens(
    entries: list[Any], tokens: list[str]
) -> None:
    """A reservation's bytes come from pieces cached per buckets and token length: every
    token (of any length, ASCII or not) is written whole after another's pieces."""
    for token in tokens:
        decision = Decision(
            Outcome.ALLOW, reservation=Reservation(entries=tuple(entries), token=token)
        )
        verdict = Verdict(decision, "0" * 24, grant=Grant("g", "G", "p"))
        sent = check_response_bytes(verdict)
        assert sent == reference_response(verdict).SerializeToString(deterministic=True)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.text(max_size=300), st.booleans()), min_size=2, max_size=6))
def test_allowed_answers_of_one_grant_with_other_decision_ids(ids: list[tuple[str, bool]]) -> None:
    """An allowed answer's head is cached per grant, id length and fail-open mark: every
    decision id (of any length, ASCII or not) is written whole, twice, after another's."""
    for decision_id, fail_open in ids:
        verdict = Verdict(
            Decision(Outcome.ALLOW), decision_id, grant=Grant("g", "G", "p"), fail_open=fail_open
        )
        sent = check_response_bytes(verdict)
        assert sent == reference_response(verdict).SerializeToString(deterministic=True)


async def test_answers_of_the_pipeline_are_the_bytes_the_generated_classes_write(
    authorizer: Authorizer,
) -> None:
    verdicts = [await post(authorizer, tool_call(rid=rid)) for rid in range(1, 5)]
    assert [v.decision.outcome.value for v in verdicts] == ["allow"] * 2 + ["deny"] * 2
    assert verdicts[0].decision.reservation is not None  # rate-limited after 2 a minute
    verdicts.append(await post(authorizer, tool_call("image.generate.openai")))  # not listed
    verdicts.append(await post(authorizer, b"{", authorization="Bearer nope"))
    verdicts.append(await post(authorizer, b"{"))  # not JSON
    verdicts.append(await post(authorizer, tool_call(rid=9), mcp_session_id="s1"))
    for verdict in verdicts:
        sent = check_response_bytes(verdict)
        assert sent == reference_response(verdict).SerializeToString(deterministic=True)
        assert check_response(verdict) == reference_response(verdict)
