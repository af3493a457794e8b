"""Envoy ext_authz over HTTP (authz/envoy/http_authz.py): the check request → HttpRequest, a
Verdict → the HTTP/1.1 answer (the same metadata as the gRPC edge's Struct), and the server
itself on a real loopback socket with the real pipeline (`tests.unit.calls`): kept-alive
connections, pipelined answers in order, bounded heads and bodies, a read deadline, and no
path to a 200 but an allowed verdict."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httptools
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.config.source import ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.envoy import http_authz
from authz.envoy.denial import DECISION_HEADER, denial
from authz.envoy.grpc_authz import check_response
from authz.envoy.http_authz import (
    CHECK_PREFIX,
    CONTEXT_HEADER,
    FAIL_OPEN_HEADER,
    GRANT_HEADER,
    HEALTH_PATH,
    HIDES_HEADER,
    JWT_HEADER,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    OUTCOME_HEADER,
    PARTIAL_BODY_HEADER,
    PEER_HEADER,
    WIRE_STATUS,
    allowed_answer,
    decision_metadata,
    denied_answer,
    http_request,
    serve_http_authz,
    wire_status,
)
from authz.model import Grant
from authz.pipeline.gate import Authorizer, Verdict
from authz.pipeline.identity import JWT_PAYLOAD_KEY
from authz.pipeline.request import HttpRequest
from tests.unit.calls import ISSUER, JSON_HEADERS, PAINTER, seed_authorizer_at, tool_call
from tests.unit.envoy.test_grpc_authz import verdicts

# -- the wire status --------------------------------------------------------------------------


def test_wire_status_is_never_an_allow_nor_an_error_status() -> None:
    """Envoy allows on 200 and takes a 5xx for a failed check (body dropped): a denial is
    sent with neither, and the two stand-ins are statuses no one else in the chain sends."""
    assert WIRE_STATUS == {200: 299, 503: 298}
    for status in range(100, 600):
        sent = wire_status(status)
        assert sent != 200 and not 500 <= sent < 600, status
        assert sent == WIRE_STATUS.get(status, 298 if status >= 500 else status)
    for stand_in in WIRE_STATUS.values():
        assert stand_in not in {s.value for s in http.HTTPStatus}


# -- Envoy → domain ---------------------------------------------------------------------------


def test_a_check_request_maps_to_the_clients_request() -> None:
    headers = {
        **JSON_HEADERS,
        "x-request-id": "rid-1",
        PEER_HEADER: PAINTER,
        JWT_HEADER: json.dumps({JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice"}}),
        PARTIAL_BODY_HEADER: "false",
    }
    request = http_request("POST", f"{CHECK_PREFIX}/mcp?x=1", dict(headers), b"{}")
    assert request == HttpRequest(
        method="POST",
        path="/mcp?x=1",
        headers={**JSON_HEADERS, "x-request-id": "rid-1", PARTIAL_BODY_HEADER: "false"},
        body=b"{}",
        partial_body=False,
        request_id="rid-1",
        source_principal=PAINTER,
        jwt_metadata={JWT_PAYLOAD_KEY: {"iss": ISSUER, "sub": "alice"}},
    )


def test_without_identity_headers_there_is_no_identity() -> None:
    request = http_request("GET", f"{CHECK_PREFIX}/mcp", {PEER_HEADER: ""}, b"")
    assert request is not None
    assert (request.source_principal, request.jwt_metadata, request.request_id) == (None,) * 3
    assert request.partial_body is False  # no marker: Envoy buffered no body


@pytest.mark.parametrize("raw", ["not json", "[1]", '"text"', "", "{}{}", '{"a":1},{"b":2}'])
def test_a_jwt_header_that_is_no_json_object_is_an_empty_namespace(raw: str) -> None:
    """The pipeline refuses an empty jwt_authn namespace (401), it never ignores it."""
    request = http_request("POST", f"{CHECK_PREFIX}/mcp", {JWT_HEADER: raw}, b"")
    assert request is not None and request.jwt_metadata == {}


@pytest.mark.parametrize(
    ("marker", "partial"),
    [
        ("false", False),
        ("FALSE", False),
        ("true", True),
        ("True", True),
        ("false,true", True),
        ("true,false", True),
        ("", True),
        ("no", True),
    ],
)
def test_the_partial_body_marker_fails_closed(marker: str, partial: bool) -> None:
    request = http_request("POST", f"{CHECK_PREFIX}/mcp", {PARTIAL_BODY_HEADER: marker}, b"{")
    assert request is not None and request.partial_body is partial


@pytest.mark.parametrize("path", ["/mcp", HEALTH_PATH, "/", "/chec/mcp", "check/mcp"])
def test_a_path_without_the_prefix_is_no_check(path: str) -> None:
    assert http_request("POST", path, {}, b"") is None


# -- domain → Envoy ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(verdicts())
def test_decision_metadata_is_the_grpc_edges_struct(verdict: Verdict) -> None:
    """The response phase reads either transport's metadata the same way."""
    struct = json_format.MessageToDict(check_response(verdict).dynamic_metadata)
    meta = decision_metadata(verdict)
    reservation = meta.get("reservation")
    if reservation is not None and reservation["entries"] == []:
        # A Struct holds an empty list as an empty Value (null); the stores never make a
        # reservation with a token and no entries.
        meta["reservation"] = {**reservation, "entries": None}
    assert meta == struct


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(verdicts(), st.text(min_size=1, max_size=40))
def test_the_context_header_is_the_metadata_as_compact_json(verdict: Verdict, token: str) -> None:
    expected = json.dumps(decision_metadata(verdict), separators=(",", ":"))
    # twice: the second text is made of the pieces the first one cached
    assert http_authz._context_text(verdict) == expected
    assert http_authz._context_text(verdict) == expected
    reservation = verdict.decision.reservation
    if reservation is not None:  # the same buckets with another token
        other = dataclasses.replace(reservation, token=token)
        verdict = dataclasses.replace(
            verdict, decision=dataclasses.replace(verdict.decision, reservation=other)
        )
        expected = json.dumps(decision_metadata(verdict), separators=(",", ":"))
        assert http_authz._context_text(verdict) == expected


async def test_decision_metadata_of_the_pipelines_verdicts(authorizer: Authorizer) -> None:
    bodies = [tool_call(rid=1), tool_call(rid=2), tool_call(rid=3), tool_call("x.y"), b"{"]
    for body in bodies:
        verdict = await authorizer.check(HttpRequest("POST", "/mcp", JSON_HEADERS, body))
        struct = json_format.MessageToDict(check_response(verdict).dynamic_metadata)
        assert decision_metadata(verdict) == struct


@dataclasses.dataclass
class Answer:
    status: int = 0
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key == name]
        assert len(found) <= 1, (name, found)
        return found[0] if found else None


class _Reader:
    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.answers.append(Answer())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.answers[-1].headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.answers[-1].status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.answers[-1].body += body

    def on_message_complete(self) -> None:
        self.answers[-1].complete = True


def parse_answers(raw: bytes) -> list[Answer]:
    """The complete HTTP/1.1 answers in `raw`, read by the C parser the server uses."""
    reader = _Reader()
    reader.parser.feed_data(raw)
    return [answer for answer in reader.answers if answer.complete]


def with_ascii_ids(verdict: Verdict) -> Verdict:
    """Ids as the configuration (`[!-~]{1,200}`) and the approval store make them."""
    grant = verdict.grant
    if grant is not None:
        grant = Grant(id="grant-7", label=grant.label, policy=grant.policy)
    decision = verdict.decision
    if decision.ticket is not None:
        ticket = dataclasses.replace(decision.ticket, id="apr_0123456789abcdef01234567")
        decision = dataclasses.replace(decision, ticket=ticket)
    return dataclasses.replace(verdict, grant=grant, decision=decision)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(verdicts().map(with_ascii_ids))
def test_an_answer_carries_the_verdict(verdict: Verdict) -> None:
    if verdict.decision.allowed:
        [answer] = parse_answers(allowed_answer(verdict))
        assert answer.status == 200 and answer.body == b""
        assert answer.header(GRANT_HEADER) == "grant-7"
        assert answer.header("x-envoy-auth-headers-to-remove") == (
            f"authorization,{FAIL_OPEN_HEADER}"
        )
        assert answer.header(HIDES_HEADER) == ("true" if verdict.hides else None)
        assert answer.header(FAIL_OPEN_HEADER) == ("true" if verdict.fail_open else None)
        outcome = "allow"
    else:
        rendered = denial(verdict)
        [answer] = parse_answers(denied_answer(verdict))
        assert answer.status == wire_status(rendered.status)
        assert answer.body == rendered.body.encode()
        for name, value in rendered.headers:
            assert answer.header(name) == value
        assert answer.header(GRANT_HEADER) is None and answer.header(HIDES_HEADER) is None
        outcome = "deny"
    assert answer.header(DECISION_HEADER) == verdict.decision_id
    assert answer.header(OUTCOME_HEADER) == outcome
    context = answer.header(CONTEXT_HEADER)
    assert context is not None and context.isascii()
    assert json.loads(context) == decision_metadata(verdict)


async def test_a_denied_head_has_the_length_and_no_body(authorizer: Authorizer) -> None:
    verdict = await authorizer.check(HttpRequest("POST", "/mcp", JSON_HEADERS, tool_call("x.y")))
    assert not verdict.decision.allowed
    whole, head = denied_answer(verdict), denied_answer(verdict, head=True)
    assert whole.startswith(head) and head.endswith(b"\r\n\r\n")
    [answer] = parse_answers(whole)
    assert len(whole) - len(head) == len(answer.body) == int(answer.header("content-length") or 0)


# -- the server, on a loopback socket ----------------------------------------------------------


@dataclasses.dataclass
class Sidecar:
    port: int
    serving: list[bool]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Sidecar]:
    """The HTTP ext_authz server on a free loopback port, with the seed pipeline."""
    state = Sidecar(0, [True])
    listening = await serve_http_authz(
        seed_authorizer_at(tmp_path), "127.0.0.1", 0, serving=lambda: state.serving[0]
    )
    state.port = listening.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        listening.close()
        await listening.wait_closed()


def check(
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/mcp",
    headers: dict[str, str] | None = None,
) -> bytes:
    """A check request as Envoy sends it (HTTP/1.1, Content-Length)."""
    lines = [f"{method} {CHECK_PREFIX}{path} HTTP/1.1", "host: mcp_authz_http"]
    lines += [f"{name}: {value}" for name, value in {**JSON_HEADERS, **(headers or {})}.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


HEALTH = b"GET /healthz HTTP/1.1\r\nhost: mcp_authz_http\r\n\r\n"


class Connection:
    """One client connection that reads whole answers as they arrive."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.raw = b""

    @classmethod
    async def open(cls, server: Sidecar) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answers(self, count: int) -> list[Answer]:
        """Wait for `count` complete answers (or fail after 10 s)."""

        async def enough() -> list[Answer]:
            while True:
                with contextlib.suppress(httptools.HttpParserError):
                    parsed = parse_answers(self.raw)
                    if len(parsed) >= count:
                        return parsed[:count]
                chunk = await self.reader.read(65536)
                assert chunk, f"closed before {count} answers: {self.raw!r}"
                self.raw += chunk

        return await asyncio.wait_for(enough(), 10)

    async def closed(self) -> bool:
        """Whether the server closes the connection (no more bytes, then EOF or a reset, when
        it closed with part of a refused request unread) within 10 s."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), 10)
        except ConnectionResetError:
            return True
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def conn(server: Sidecar) -> AsyncIterator[Connection]:
    connection = await Connection.open(server)
    try:
        yield connection
    finally:
        await connection.close()


def decided(answer: Answer) -> dict[str, Any]:
    context = answer.header(CONTEXT_HEADER)
    assert context is not None
    parsed: dict[str, Any] = json.loads(context)
    return parsed


async def test_one_connection_serves_many_checks(conn: Connection) -> None:
    statuses = []
    for rid in range(1, 5):  # the seed grant may call twice a minute
        await conn.send(check(tool_call(rid=rid)))
        [answer] = (await conn.answers(rid))[rid - 1 :]
        statuses.append(answer.status)
        assert decided(answer)["jsonrpc_id"] == str(rid)
    assert statuses == [200, 200, 299, 299]
    await conn.send(HEALTH)
    assert (await conn.answers(5))[4].status == 200


async def test_pipelined_checks_are_answered_in_order(conn: Connection) -> None:
    await conn.send(
        check(tool_call(rid=1))
        + check(tool_call("image.generate.openai", rid=2))  # not in the policy: denied
        + check(tool_call(rid=3), headers={"authorization": "Bearer nope"})
        + HEALTH
        + check(tool_call(rid=4))
    )
    answers = await conn.answers(5)
    assert [a.status for a in answers] == [200, 299, 401, 200, 200]
    assert [decided(answers[i]).get("jsonrpc_id") for i in (0, 1, 4)] == ["1", "2", "4"]
    assert json.loads(answers[1].body)["id"] == 2
    assert answers[2].header("www-authenticate") is not None


async def test_a_check_split_into_many_writes(conn: Connection) -> None:
    request = check(tool_call(rid=1))
    for start in range(0, len(request), 7):
        await conn.send(request[start : start + 7])
    [answer] = await conn.answers(1)
    assert answer.status == 200 and answer.header(GRANT_HEADER) == "g1"


def many_headers(count: int) -> bytes:
    names = "".join(f"x-h{i}: v\r\n" for i in range(count))
    return f"POST {CHECK_PREFIX}/mcp HTTP/1.1\r\n{names}content-length: 0\r\n\r\n".encode()


REFUSED = [
    pytest.param(many_headers(MAX_HEADERS + 1), 431, id="headers-count"),
    pytest.param(check(headers={"x-big": "a" * (MAX_HEAD_BYTES + 1)}), 431, id="header-size"),
    pytest.param(
        f"POST {CHECK_PREFIX}/{'a' * MAX_HEAD_BYTES} HTTP/1.1\r\n\r\n".encode(), 431, id="long-path"
    ),
    pytest.param(check(b"x" * (MAX_BODY_BYTES + 1)), 413, id="body"),
    pytest.param(b"HELLO\r\n\r\n", 400, id="garbage"),
    pytest.param(
        b"POST /check/mcp HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
        400,
        id="two-lengths",
    ),
    pytest.param(
        b"GET /check/mcp HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        400,
        id="upgrade",
    ),
    pytest.param(
        check(tool_call(), path="/mcp").replace(b"/check", b"/other"), 404, id="not-a-check"
    ),
    pytest.param(b"POST /healthz HTTP/1.1\r\ncontent-length: 0\r\n\r\n", 404, id="post-health"),
]


@pytest.mark.parametrize(("request_bytes", "status"), REFUSED)
async def test_what_cannot_be_read_is_refused_and_the_connection_closed(
    conn: Connection, request_bytes: bytes, status: int
) -> None:
    await conn.send(check(tool_call(rid=1)))  # answered first: the refusal comes after it
    # the server may close while the rest of a large refused request is still on its way
    with contextlib.suppress(ConnectionError):
        await conn.send(request_bytes + check(tool_call(rid=2)))
    answers = await conn.answers(2)
    assert [a.status for a in answers] == [200, status]
    refusal = answers[1]
    assert refusal.header("connection") == "close"
    assert refusal.header(OUTCOME_HEADER) is None and refusal.header(CONTEXT_HEADER) is None
    assert json.loads(refusal.body)["error"]["code"] == -32603
    assert await conn.closed()
    assert [a.status for a in parse_answers(conn.raw)] == [200, status]  # nothing after it


async def test_more_pipelined_checks_than_queued_are_refused_after_those(
    conn: Connection,
) -> None:
    queued = 8
    await conn.send(HEALTH * (queued + 1))
    answers = await conn.answers(queued + 1)
    assert [a.status for a in answers] == [200] * queued + [400]
    assert await conn.closed()


@pytest.fixture
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setattr(http_authz, "_READ_DEADLINE", 0.3)
    yield 0.3


@pytest.mark.parametrize("part", ["head", "body"])
async def test_an_incomplete_check_hits_the_read_deadline(
    server: Sidecar, conn: Connection, short_deadline: float, part: str
) -> None:
    idle = await Connection.open(server)  # kept alive: no request started, no deadline
    try:
        request = check(tool_call(rid=1))
        cut = request.index(b"\r\n") + 2 if part == "head" else len(request) - 5
        await conn.send(request[:cut])
        [answer] = await conn.answers(1)
        assert answer.status == 400
        assert "incomplete" in json.loads(answer.body)["error"]["message"]
        assert await conn.closed()
        await idle.send(HEALTH)  # the deadline has passed for the other connection
        assert (await idle.answers(1))[0].status == 200
    finally:
        await idle.close()


async def test_head_answers_have_no_body(conn: Connection) -> None:
    """A HEAD check is denied (405) with its length and no body; so is a HEAD of /healthz:
    the answer after them starts right after their heads."""
    await conn.send(check(method="HEAD") + b"HEAD /healthz HTTP/1.1\r\n\r\n" + HEALTH)
    healthy = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    while conn.raw.count(b"\r\n\r\n") < 3:
        chunk = await asyncio.wait_for(conn.reader.read(65536), 10)
        assert chunk, conn.raw
        conn.raw += chunk
    denied, health, rest = conn.raw.split(b"\r\n\r\n", 2)
    assert denied.startswith(b"HTTP/1.1 405 ")
    assert b"\r\ncontent-length: 0" not in denied
    assert health + b"\r\n\r\n" == healthy
    assert rest == healthy


async def test_health_follows_serving(server: Sidecar, conn: Connection) -> None:
    statuses: list[int] = []
    for serving in (True, False, True):
        server.serving[0] = serving
        await conn.send(HEALTH)
        statuses.append((await conn.answers(len(statuses) + 1))[-1].status)
    assert statuses == [200, 503, 200]


class Broken(Authorizer):
    """The real pipeline, failing where it decides."""

    async def check(self, http: HttpRequest) -> Verdict:
        raise RuntimeError("the pipeline failed")


@pytest.mark.processes
async def test_an_authorizer_that_raises_is_a_403_and_a_closed_connection(
    tmp_path: Path,
) -> None:
    seed_authorizer_at(tmp_path)  # writes the seed configuration
    broken = Broken(ConfigSource.open(tmp_path), MemoryCounterStore())
    listening = await serve_http_authz(broken, "127.0.0.1", 0)
    try:
        port = listening.sockets[0].getsockname()[1]
        conn = Connection(*await asyncio.open_connection("127.0.0.1", port))
        try:
            await conn.send(check(tool_call()) + check(tool_call()))
            [answer] = await conn.answers(1)
            assert answer.status == 403
            assert answer.header(GRANT_HEADER) is None and answer.header(OUTCOME_HEADER) is None
            assert json.loads(answer.body)["error"]["message"].startswith("[POLICY DENIED] ")
            assert await conn.closed()
            assert len(parse_answers(conn.raw)) == 1
        finally:
            await conn.close()
    finally:
        listening.close()
        await listening.wait_closed()
