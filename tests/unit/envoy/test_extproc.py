"""The ext_proc edge and the response pipeline, through real protobuf messages.

The request phase runs for real (`Authorizer.check` → `check_response`); its dynamic
metadata is handed to the ext_proc service exactly as Envoy forwards it
(`metadata_context.filter_metadata["envoy.filters.http.ext_authz"]`), and the service is
driven with the `ProcessingRequest`s Envoy sends, with the response attributes Envoy adds
(`response.code_details`, `response.flags`). Give-back and the in-flight registry run on
both kinds of store (memory, Redis).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from authz._pb.envoy.config.core.v3 import base_pb2
from authz._pb.envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from authz._pb.envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from authz.config.grants import hash_token
from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.counters.redis import RedisCounterStore
from authz.devstack.envoy_config import load_envoy_config, repo_envoy_config_path
from authz.envoy.extproc import (
    STREAMED_RESPONSE,
    ExternalProcessorService,
    body_response,
    headers_response,
    response_attributes,
    response_context,
)
from authz.envoy.grpc_authz import METADATA_NAMESPACE, check_response
from authz.inflight import InflightStore, MemoryInflightStore
from authz.inflight.redis import RedisInflightStore
from authz.model import Reservation
from authz.oauth.config import PRM_PATH
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.request import HttpRequest
from authz.pipeline.response import Responder
from authz.response.inspector import Plan, ResponseContext
from tests.redis_server import RedisServer

Store = MemoryCounterStore | RedisCounterStore
NOW = 1_000_020.0
UF, UC = 0x20, 0x40
REFUSED_CONNECTION = "upstream_reset_before_response_started{remote_connection_failure}"
TOOL = "image.generate.gemini"
HIDDEN = "image.generate.replicate"
POLICIES = {
    "quota": {
        "version": "1",
        "default": "deny",
        # a methods section admits resources and prompts as before: this grant's listings
        # are not filtered (without it, default deny would leave out every resource)
        "methods": {"default": "allow"},
        "tools": {
            TOOL: {"limits": [{"counter": "c", "window": "day", "max": 2, "scope": "grant"}]}
        },
    },
    "hider": {"version": "1", "hide": [HIDDEN]},
}
ROOT = Path(__file__).resolve().parents[3]


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(gid), "policy": policy}
        for gid, policy in (("q", "quota"), ("h", "hider"))
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return root


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.processes)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryCounterStore()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisCounterStore.from_url(
            server.url, prefix=f"t-{secrets.token_hex(4)}", timeout=1.0
        )
    yield made
    await made.close()


def inflight_store(store: Store) -> InflightStore:
    """In-flight ids where the counters are (as the sidecar builds them)."""
    if isinstance(store, RedisCounterStore):
        return RedisInflightStore(store.client, prefix=store.prefix, timeout=1.0, owns_client=False)
    return MemoryInflightStore()


class Pipeline:
    def __init__(
        self, root: Path, store: Store, inflight: InflightStore | None = None, **options: Any
    ) -> None:
        config = ConfigSource.open(root)
        self.store = store
        self.inflight = inflight if inflight is not None else inflight_store(store)
        self.authorizer = Authorizer(
            config, store, clock=lambda: NOW, inflight=self.inflight, **options
        )
        self.responder = Responder(config, store, inflight=self.inflight)
        self.service = ExternalProcessorService(self.responder)
        self.bucket: tuple[str, str, str, int] | None = None

    async def check(
        self, grant: str, body: dict[str, Any], *, session: str | None = None
    ) -> Verdict:
        headers = {"content-type": "application/json", "authorization": f"Bearer {grant}"}
        if session is not None:
            headers["mcp-session-id"] = session
        verdict = await self.authorizer.check(
            HttpRequest("POST", "/mcp", headers, json.dumps(body).encode())
        )
        reservation = verdict.decision.reservation
        if grant == "q" and reservation is not None and reservation.entries:
            self.bucket = reservation.entries[0][0]
        return verdict

    async def respond(
        self, verdict: Verdict, messages: list[pb.ProcessingRequest]
    ) -> list[pb.ProcessingResponse]:
        metadata = metadata_of(verdict)
        for message in messages:
            message.metadata_context.CopyFrom(metadata)

        async def requests() -> AsyncIterator[pb.ProcessingRequest]:
            for message in messages:
                yield message

        out = [answer async for answer in self.service.Process(requests(), None)]
        await self.responder.drain()
        return out

    async def used(self) -> int:
        """The count of the quota policy's bucket for grant `q` (its key as the store made
        it, read from a reservation)."""
        if self.bucket is None:
            return 0
        bucket = self.bucket
        if isinstance(self.store, MemoryCounterStore):
            return self.store.count(bucket, NOW)
        return await self.store.count(bucket)


@pytest.fixture
def pipeline(tmp_path: Path, store: Store) -> Pipeline:
    return Pipeline(write_config(tmp_path / "config"), store)


def metadata_of(verdict: Verdict) -> base_pb2.Metadata:
    """The metadata_context Envoy forwards: ext_authz's dynamic_metadata, one namespace."""
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(check_response(verdict).dynamic_metadata)
    return metadata


def call(rid: Any = 1, tool: str = TOOL) -> dict[str, Any]:
    params = {"name": tool, "arguments": {"prompt": "x"}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def list_tools(rid: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/list", "params": {}}


def headers(
    status: int,
    content_type: str | None = None,
    eos: bool = False,
    encoding: str | None = None,
    *,
    details: str | None = "via_upstream",
    flags: int | None = 0,
) -> pb.ProcessingRequest:
    """Response headers as Envoy sends them, with the filter's response attributes."""
    values = [(":status", str(status))]
    if content_type:
        values.append(("content-type", content_type))
    if encoding:
        values.append(("content-encoding", encoding))
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values]
    )
    request = pb.ProcessingRequest(
        response_headers=pb.HttpHeaders(headers=header_map, end_of_stream=eos)
    )
    attributes: dict[str, Any] = {"response.code": float(status)}
    if details is not None:
        attributes["response.code_details"] = details
    if flags is not None:
        attributes["response.flags"] = float(flags)  # CEL numbers arrive as doubles
    request.attributes["envoy.filters.http.ext_proc"].update(attributes)
    return request


def not_delivered() -> pb.ProcessingRequest:
    """Envoy's local reply for a connection the upstream refused (flag UF)."""
    return headers(503, "application/json", details=REFUSED_CONNECTION, flags=UF)


def body(data: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=eos))


def sse(message: dict[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + json.dumps(message).encode() + b"\r\n\r\n"


# -- the metadata contract ----------------------------------------------------------------


@pytest.mark.parametrize("rid", [1, 0, "abc", "1", 2**63 + 5, "é\u2028"])
async def test_metadata_carries_id_and_reservation_exactly(pipeline: Pipeline, rid: Any) -> None:
    verdict = await pipeline.check("q", call(rid))
    assert verdict.decision.allowed and verdict.decision.reservation is not None
    context = response_context(metadata_of(verdict))
    assert context == ResponseContext(
        decision_id=verdict.decision_id,
        decision="allow",
        grant_id="q",
        policy="quota",
        method="tools/call",
        tool=TOOL,
        rpc_id=rid,
        reservation=verdict.decision.reservation,
    )
    assert type(context.rpc_id) is type(rid)


async def test_metadata_tells_the_response_phase_what_to_filter_and_free(
    pipeline: Pipeline,
) -> None:
    hider = response_context(metadata_of(await pipeline.check("h", list_tools(1), session="s")))
    assert hider.hides and hider.inflight is not None and len(hider.inflight) == 64
    plain = response_context(metadata_of(await pipeline.check("q", call(2))))
    assert not plain.hides and plain.inflight is None  # no session: nothing registered
    fields = check_response(await pipeline.check("h", list_tools(3))).dynamic_metadata.fields
    assert fields["hides"].bool_value is True


def test_response_attributes_are_read_from_the_filters_namespace() -> None:
    assert response_attributes(not_delivered()) == (REFUSED_CONNECTION, UF)
    assert response_attributes(headers(200)) == ("via_upstream", 0)
    bare = headers(200, details=None, flags=None)
    assert response_attributes(bare) == (None, None)
    odd = headers(200)
    odd.attributes["envoy.filters.http.ext_proc"].update({"response.flags": -1.5})
    assert response_attributes(odd) == ("via_upstream", None)
    assert response_attributes(pb.ProcessingRequest()) == (None, None)


async def test_denials_and_notifications_carry_no_reservation_or_id(pipeline: Pipeline) -> None:
    denied = response_context(metadata_of(await pipeline.check("q", call(tool="other"))))
    assert denied.decision == "deny" and denied.reservation is None and denied.rpc_id == 1
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    notified = response_context(metadata_of(await pipeline.check("q", note)))
    assert notified.decision == "allow" and notified.rpc_id is None
    listed = response_context(metadata_of(await pipeline.check("h", list_tools(5))))
    assert (listed.method, listed.rpc_id, listed.reservation) == ("tools/list", 5, None)


def test_no_metadata_means_no_decision() -> None:
    assert response_context(base_pb2.Metadata()) == ResponseContext()


@pytest.mark.parametrize(
    "reservation",
    [
        "x",
        {"token": "", "entries": []},
        {"token": "t", "entries": [{"counter": "c", "scope": "grant", "key": "g"}]},
        {"token": "t", "entries": [{"counter": 1, "scope": "g", "key": "g", "window": 60}]},
        {
            "token": "t",
            "entries": [
                {"counter": "c", "scope": "g", "key": "g", "window": 1.5, "start": 0, "cost": 1}
            ],
        },
    ],
)
def test_unreadable_reservations_are_ignored(reservation: Any) -> None:
    metadata = base_pb2.Metadata()
    metadata.filter_metadata[METADATA_NAMESPACE].update(
        {"decision": "allow", "mcp_method": "tools/call", "reservation": reservation}
    )
    assert response_context(metadata).reservation is None


# -- the messages -----------------------------------------------------------------------


def test_headers_and_body_answers() -> None:
    passing = headers_response(Plan.PASS)
    assert passing.HasField("response_headers") and not passing.HasField("mode_override")
    observing = headers_response(Plan.OBSERVE)
    assert observing.mode_override == STREAMED_RESPONSE
    assert not observing.response_headers.response.header_mutation.remove_headers
    filtering = headers_response(Plan.FILTER)
    assert filtering.mode_override == STREAMED_RESPONSE
    assert list(filtering.response_headers.response.header_mutation.remove_headers) == [
        "content-length"
    ]
    assert not body_response(None).response_body.response.HasField("body_mutation")
    assert body_response(b"").response_body.response.body_mutation.clear_body
    assert body_response(b"x").response_body.response.body_mutation.body == b"x"


def _hcm(path: Path) -> dict[str, Any]:
    cfg = load_envoy_config(path)
    hcm: dict[str, Any] = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]
    return hcm


def _ext_proc(hcm: dict[str, Any]) -> dict[str, Any]:
    filters = hcm["http_filters"]
    names = [f["name"] for f in filters]
    assert names.index("envoy.filters.http.ext_authz") < names.index("envoy.filters.http.ext_proc")
    assert names[-1] == "envoy.filters.http.router"
    config: dict[str, Any] = filters[names.index("envoy.filters.http.ext_proc")]["typed_config"]
    return config


def _mode(source: dict[str, str]) -> processing_mode_pb2.ProcessingMode:
    message = processing_mode_pb2.ProcessingMode()
    for key, value in source.items():
        setattr(message, key, value)
    return message


@pytest.mark.parametrize("name", ["envoy.yaml", "envoy-mesh.yaml"])
def test_envoy_filter_config_matches_the_service(name: str) -> None:
    """The mode the service asks for is the one Envoy allows; the rest of the contract."""
    hcm = _hcm(repo_envoy_config_path().parent / name)
    config = _ext_proc(hcm)
    assert config["grpc_service"]["envoy_grpc"]["cluster_name"] == "mcp_authz"
    assert config["failure_mode_allow"] is True  # see docs/security.md
    assert config["message_timeout"] == "1s"
    # the evidence for give-back
    assert config["response_attributes"] == ["response.code_details", "response.flags"]
    # off unless the route turns it on: route-less local replies never reach it
    off = _mode(config["processing_mode"])
    assert off.request_header_mode == off.response_header_mode == off.SKIP
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    mcp = next(r for r in routes if r["match"] == {"path": "/mcp"})
    override = mcp["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
    on = _mode(override["processing_mode"])
    assert (on.request_header_mode, on.response_header_mode) == (on.SKIP, on.SEND)
    assert on.response_body_mode == on.NONE  # bodies only when the sidecar asks
    assert "failure_mode_allow" not in override
    # a grant that hides tools: the same route, chosen by the sidecar's own metadata after
    # ext_authz (clear_route_cache), whose response phase fails closed
    hiding = routes[0]
    assert hiding["match"] == {
        "path": "/mcp",
        "dynamic_metadata": [
            {
                "filter": METADATA_NAMESPACE,
                "path": [{"key": "hides"}],
                "value": {"bool_match": True},
            }
        ],
    }
    closed = hiding["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["overrides"]
    assert closed == {**override, "failure_mode_allow": False}
    assert {k: v for k, v in hiding.items() if k not in ("match", "typed_per_filter_config")} == {
        k: v for k, v in mcp.items() if k not in ("match", "typed_per_filter_config")
    }
    ext_authz = hcm["http_filters"][
        [f["name"] for f in hcm["http_filters"]].index("envoy.filters.http.ext_authz")
    ]["typed_config"]
    assert ext_authz["clear_route_cache"] is True
    # the protected resource metadata (public): neither ext_authz nor ext_proc
    metadata = next(r for r in routes if r["match"] == {"prefix": PRM_PATH})
    assert metadata["typed_per_filter_config"]["envoy.filters.http.ext_proc"]["disabled"] is True
    others = [r for r in routes if r not in (mcp, hiding, metadata)]
    assert all("typed_per_filter_config" not in r for r in others)
    assert config["allow_mode_override"] is True
    assert [_mode(m) for m in config["allowed_override_modes"]] == [STREAMED_RESPONSE]
    forwarded = config["metadata_options"]["forwarding_namespaces"]["untyped"]
    assert forwarded == [METADATA_NAMESPACE]
    patterns = config["forward_rules"]["allowed_headers"]["patterns"]
    assert patterns == [
        {"exact": ":status"},
        {"exact": "content-type"},
        {"exact": "content-encoding"},
    ]
    # compressed bodies would be opaque to the sidecar: the MCP server is not asked for them
    assert mcp["request_headers_to_remove"] == ["accept-encoding"]


# -- tools/list through the service ---------------------------------------------------------

LISTING = {
    "jsonrpc": "2.0",
    "id": 3,
    "result": {"tools": [{"name": "a"}, {"name": HIDDEN}], "nextCursor": "c\u00e9"},
}


async def test_service_filters_a_json_listing(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("h", list_tools(3))
    raw = json.dumps(LISTING).encode()
    with structlog.testing.capture_logs() as logs:
        out = await pipeline.respond(
            verdict, [headers(200, "application/json"), body(raw[:10]), body(raw[10:], eos=True)]
        )
    assert out[0].mode_override == STREAMED_RESPONSE
    assert out[1].response_body.response.body_mutation.clear_body  # held
    new = out[2].response_body.response.body_mutation.body
    assert json.loads(new)["result"] == {"tools": [{"name": "a"}], "nextCursor": "cé"}
    assert b'"nextCursor": "c\\u00e9"' in new  # the original bytes
    event = next(e for e in logs if e["event"] == "response")
    assert event["decision_id"] == verdict.decision_id
    assert (event["tools_removed"], event["give_back"], event["complete"]) == (1, False, True)


async def test_service_filters_an_sse_listing_and_passes_other_events(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("h", list_tools(3))
    note = sse({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
    listing = sse(LISTING)
    out = await pipeline.respond(
        verdict,
        [
            headers(200, "text/event-stream"),
            body(note + listing[:20]),
            body(listing[20:]),
            body(b"", eos=True),
        ],
    )
    assert out[1].response_body.response.body_mutation.body == note  # the rest is held
    rewritten = out[2].response_body.response.body_mutation.body
    assert HIDDEN.encode() not in rewritten and rewritten.endswith(b"\r\n\r\n")
    assert len(out) == 4  # a grant that hides tools: every chunk is read, to the end


@pytest.mark.parametrize(
    ("content_type", "encoding"), [("application/json", "gzip"), ("text/html", None)]
)
async def test_service_answers_itself_when_a_body_cannot_be_checked(
    pipeline: Pipeline, content_type: str, encoding: str | None
) -> None:
    verdict = await pipeline.check("h", list_tools(3))
    with structlog.testing.capture_logs() as logs:
        out = await pipeline.respond(verdict, [headers(200, content_type, encoding=encoding)])
    assert len(out) == 1 and out[0].HasField("immediate_response")
    reply = out[0].immediate_response
    assert reply.status.code == 502
    error = json.loads(reply.body)
    assert error["id"] == 3 and error["error"]["message"].startswith("[POLICY DENIED] ")
    [content_type_header] = reply.headers.set_headers
    assert content_type_header.header.key == "content-type"
    event = next(e for e in logs if e["event"] == "response")
    assert event["withheld"] == 1


async def test_service_filters_every_answer_to_a_grant_that_hides_tools(
    pipeline: Pipeline,
) -> None:
    """A ping answered with a listing (the SDK routes by str(id)): filtered all the same."""
    verdict = await pipeline.check("h", {"jsonrpc": "2.0", "id": "3", "method": "ping"})
    out = await pipeline.respond(
        verdict, [headers(200, "text/event-stream"), body(sse(LISTING)), body(b"", eos=True)]
    )
    rewritten = out[1].response_body.response.body_mutation.body
    assert HIDDEN.encode() not in rewritten and b'"name": "a"' in rewritten


async def test_service_leaves_other_responses_and_ends_the_stream(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("q", {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    out = await pipeline.respond(verdict, [headers(200, "text/event-stream"), body(b"x")])
    assert len(out) == 1 and not out[0].HasField("mode_override")  # then the stream ends


async def test_service_answers_unexpected_messages(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("h", list_tools())
    odd = [
        pb.ProcessingRequest(request_headers=pb.HttpHeaders()),
        pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
        body(b"before headers"),
    ]
    out = await pipeline.respond(verdict, odd)
    assert [m.WhichOneof("response") for m in out] == [
        "request_headers",
        "response_trailers",
        "response_body",
    ]


async def test_an_internal_error_while_filtering_fails_closed(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = await pipeline.check("h", list_tools(3))
    raw = json.dumps(LISTING).encode()

    def boom(*_args: Any) -> tuple[str, dict[str, int]]:
        raise RuntimeError("bug")

    monkeypatch.setattr("authz.response.inspector.filter_listing", boom)
    with structlog.testing.capture_logs() as logs:
        out = await pipeline.respond(
            verdict, [headers(200, "application/json"), body(raw[:10]), body(raw[10:], eos=True)]
        )
    error = json.loads(out[2].response_body.response.body_mutation.body)
    assert error["id"] == 3 and error["error"]["code"] == -32603  # never the unread listing
    assert any(e["event"] == "response_read_failed" for e in logs)
    event = next(e for e in logs if e["event"] == "response")
    assert (event["tools_removed"], event["unparsed"], event["withheld"]) == (0, 1, 1)


async def test_an_error_in_the_inspector_itself_ends_the_answer_with_an_error(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = await pipeline.check("h", list_tools(3))
    raw = json.dumps(LISTING).encode()

    def boom(*_args: Any) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr("authz.response.inspector.ResponseInspector._filter_json", boom)
    with structlog.testing.capture_logs() as logs:
        out = await pipeline.respond(
            verdict, [headers(200, "application/json"), body(raw[:10]), body(raw[10:], eos=True)]
        )
    assert json.loads(out[1].response_body.response.body_mutation.body)["id"] == 3
    assert out[2].response_body.response.body_mutation.clear_body  # the rest is dropped
    assert any(e["event"] == "extproc_body_failed" for e in logs)


async def test_an_error_in_the_inspector_while_observing_passes_the_body(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = await pipeline.check("q", call(1))

    def boom(*_args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr("authz.response.inspector.ResponseInspector._observe", boom)
    out = await pipeline.respond(
        verdict, [headers(200, "application/json"), body(b'{"jsonrpc"'), body(b"}", eos=True)]
    )
    assert len(out) == 2 and not out[1].response_body.response.HasField("body_mutation")
    assert await pipeline.used() == 1


# -- give-back through the service, on both stores ------------------------------------------


async def test_a_call_envoy_never_delivered_gives_back_once_never_below_zero(
    pipeline: Pipeline,
) -> None:
    first = await pipeline.check("q", call(1))
    second = await pipeline.check("q", call(2))
    assert await pipeline.used() == 2
    with structlog.testing.capture_logs() as logs:
        await pipeline.respond(first, [not_delivered()])
    assert await pipeline.used() == 1
    event = next(e for e in logs if e["event"] == "response")
    assert (event["give_back"], event["reason"], event["released"]) == (
        True,
        "not_delivered",
        True,
    )
    assert event["decision_id"] == first.decision_id and event["status"] == 503
    assert event["origin"] == REFUSED_CONNECTION
    # the same response again (a retried stream): idempotent
    await pipeline.respond(first, [not_delivered()])
    assert await pipeline.used() == 1
    await pipeline.respond(second, [not_delivered()])
    await pipeline.respond(second, [not_delivered()])
    assert await pipeline.used() == 0
    third = await pipeline.check("q", call(3))
    assert third.decision.allowed and await pipeline.used() == 1


async def test_a_4xx_from_the_server_gives_back(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("q", call(1))
    await pipeline.respond(verdict, [headers(400, "application/json")])
    assert await pipeline.used() == 0


@pytest.mark.parametrize(
    "response",
    [
        headers(500, "application/json"),  # the server's own 5xx: after the tool ran
        headers(503, "application/json", details=REFUSED_CONNECTION, flags=UC),  # delivered
        headers(503, "application/json", details=None, flags=None),  # no evidence at all
    ],
)
async def test_without_evidence_the_quota_stays(
    pipeline: Pipeline, response: pb.ProcessingRequest
) -> None:
    verdict = await pipeline.check("q", call(1))
    with structlog.testing.capture_logs() as logs:
        await pipeline.respond(verdict, [response])
    assert await pipeline.used() == 1
    event = next(e for e in logs if e["event"] == "response")
    assert (event["give_back"], event["reason"], event["released"]) == (
        False,
        "http_status",
        None,
    )


@pytest.mark.parametrize("media", ["sse", "json"])
async def test_a_jsonrpc_error_and_a_result_both_keep_the_quota(
    pipeline: Pipeline, media: str
) -> None:
    def answer(message: dict[str, Any]) -> list[pb.ProcessingRequest]:
        if media == "sse":
            return [headers(200, "text/event-stream"), body(sse(message)), body(b"", eos=True)]
        return [headers(200, "application/json"), body(json.dumps(message).encode(), eos=True)]

    cancelled = await pipeline.check("q", call(1))
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32800, "message": "Request cancelled"}}
    out = await pipeline.respond(cancelled, answer(error))
    assert all(not m.response_body.response.HasField("body_mutation") for m in out[1:])
    done = await pipeline.check("q", call(2))
    await pipeline.respond(done, answer({"jsonrpc": "2.0", "id": 2, "result": {"content": []}}))
    assert await pipeline.used() == 2
    assert not (await pipeline.check("q", call(4))).decision.allowed


async def test_the_stream_ends_once_the_answer_is_seen(pipeline: Pipeline) -> None:
    """A large result (an image) need not go through the sidecar after its first bytes."""
    verdict = await pipeline.check("q", call(1))
    result = sse({"jsonrpc": "2.0", "id": 1, "result": {"content": []}})
    out = await pipeline.respond(
        verdict,
        [headers(200, "text/event-stream"), body(result), body(b": more"), body(b"", eos=True)],
    )
    assert len(out) == 2  # Envoy passes the rest without asking
    assert await pipeline.used() == 1


async def test_a_stream_that_ends_early_keeps_the_quota(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("q", call(1))
    await pipeline.respond(verdict, [headers(200, "text/event-stream"), body(b"event: mes")])
    assert await pipeline.used() == 1


async def test_a_denial_and_a_local_reply_pass_untouched(pipeline: Pipeline) -> None:
    await pipeline.check("q", call(1))
    await pipeline.check("q", call(2))
    denied = await pipeline.check("q", call(3))  # over the limit
    assert not denied.decision.allowed
    out = await pipeline.respond(denied, [headers(200, "application/json"), body(b"{}", True)])
    assert len(out) == 1 and not out[0].HasField("mode_override")
    assert await pipeline.used() == 2


async def test_a_store_that_fails_keeps_the_quota_and_is_logged(tmp_path: Path) -> None:
    class Broken(MemoryCounterStore):
        async def release(self, reservation: Reservation) -> None:
            raise OSError("down")

    pipeline = Pipeline(write_config(tmp_path / "config"), Broken())
    verdict = await pipeline.check("q", call(1))
    with structlog.testing.capture_logs() as logs:
        await pipeline.respond(verdict, [not_delivered()])
    event = next(e for e in logs if e["event"] == "response")
    assert (event["give_back"], event["released"]) == (True, False)
    assert "OSError" in event["release_error"]
    assert await pipeline.used() == 1


# -- ids in flight, through the request and the response phase -------------------------------


def answer_to(rid: Any) -> list[pb.ProcessingRequest]:
    message = {"jsonrpc": "2.0", "id": rid, "result": {}}
    return [headers(200, "text/event-stream"), body(sse(message)), body(b"", eos=True)]


async def test_a_colliding_id_is_refused_until_the_first_answer_went_by(
    pipeline: Pipeline,
) -> None:
    first = await pipeline.check("q", call(7), session="s1")
    assert first.decision.allowed and first.inflight is not None
    for rid, method in [("7", "tools/call"), (7, "tools/list"), ("7", "ping")]:
        clash = await pipeline.check("q", {**call(rid), "method": method}, session="s1")
        assert not clash.decision.allowed and clash.decision.rule == "(id in use)"
        rendered = check_response(clash).denied_response
        assert rendered.status.code == 400
        error = json.loads(rendered.body)
        assert error["id"] == rid and error["error"]["code"] == -32600
        assert "in flight" in error["error"]["message"]
    # another session, or no session (the 2026-07-28 era): no collision
    assert (await pipeline.check("q", call("7"), session="s2")).decision.allowed
    assert (await pipeline.check("h", list_tools("7"))).decision.allowed
    assert await pipeline.used() == 2  # the refused calls took no quota
    await pipeline.respond(first, answer_to(7))
    again = await pipeline.check("h", list_tools("7"), session="s1")
    assert again.decision.allowed


async def test_a_denied_request_frees_its_id_at_once(pipeline: Pipeline) -> None:
    denied = await pipeline.check("q", call(1, tool="not-allowed"), session="s1")
    assert not denied.decision.allowed and denied.inflight is None
    assert (await pipeline.check("q", call(1), session="s1")).decision.allowed


async def test_a_response_that_ends_early_frees_its_id(pipeline: Pipeline) -> None:
    verdict = await pipeline.check("h", list_tools(4), session="s1")
    await pipeline.respond(verdict, [headers(200, "text/event-stream"), body(b"event: mes")])
    assert (await pipeline.check("h", list_tools(4), session="s1")).decision.allowed


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_registry_that_cannot_answer_fails_closed(tmp_path: Path, fail_open: bool) -> None:
    class Down(MemoryInflightStore):
        async def claim(self, key: str, owner: str, now: float) -> bool:
            raise OSError("down")

    pipeline = Pipeline(
        write_config(tmp_path / "config"), MemoryCounterStore(), Down(), fail_open=fail_open
    )
    verdict = await pipeline.check("q", call(1), session="s1")
    if fail_open:  # --redis-fail-open: the call goes through, unregistered
        assert verdict.decision.allowed and verdict.inflight is None
    else:
        assert not verdict.decision.allowed and verdict.decision.rule == "(inflight)"
        assert check_response(verdict).denied_response.status.code == 200  # a tool result
        assert await pipeline.used() == 0
