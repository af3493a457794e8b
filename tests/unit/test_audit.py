"""What the audit events of decisions and approvals may carry (never a query string, an
argument value, or a digest that can be brute-forced back to the values), and how every
line is written: queued for the event loop's next turn, written at once when the queue is
full (counted and said), never dropped."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import io
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from authz import audit
from authz.audit import (
    DECISION_FIELDS,
    AuditContext,
    LineWriter,
    configure_logging,
    log_decision,
    log_writer,
    path_without_query,
)
from authz.metrics import Metrics
from authz.model import ApprovalTicket, Decision, DenyKind, Grant, McpRequest


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


# -- the log writer ---------------------------------------------------------------------


class Stream(io.StringIO):
    """A log stream that counts its writes (and can refuse them)."""

    def __init__(self, *, broken: bool = False) -> None:
        super().__init__()
        self.writes = 0
        self.broken = broken

    def write(self, text: str) -> int:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.writes += 1
        return super().write(text)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines()]


@pytest.fixture
def configured() -> Iterator[Stream]:
    """`configure_logging` on a Stream; structlog's and audit's state restored afterwards."""
    saved = structlog.get_config()
    saved_audit = (audit._writer, audit._processors, audit._decisions_logged)
    stream = Stream()
    writer = configure_logging("info", stream)
    # no logger may keep this chain once the test is over: a module's logger cached on its
    # first use would write to this stream (at this level) in every later test
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield stream
    finally:
        writer.flush()
        atexit.unregister(writer.flush)
        structlog.configure(**saved)
        audit._writer, audit._processors, audit._decisions_logged = saved_audit


def decide(path: str = "/mcp", **extra: Any) -> None:
    log_decision(
        AuditContext("d1", "r1", "POST", path),
        Decision.deny(DenyKind.POLICY, "no", rule="/tools/t/deny_if/0"),
        grant=Grant("g1", "G1", "p"),
        request=McpRequest("tools/call", 7, False, tool="t", arguments={"b": 1, "a": "secret"}),
        policy_name="p",
        policy_hash="h",
        duration_ms=0.12345,
        **extra,
    )


async def test_lines_logged_in_the_loop_are_written_together_when_it_turns() -> None:
    stream = Stream()
    writer = LineWriter(stream)
    for i in range(5):
        writer.msg(f'{{"n": {i}}}')
    assert stream.getvalue() == "" and writer.queued == 5  # the caller never waits for it
    await asyncio.sleep(0)
    assert [line["n"] for line in stream.lines()] == [0, 1, 2, 3, 4]
    assert stream.writes == 1 and writer.queued == 0 and writer.full == 0


async def test_a_full_queue_is_written_at_once_and_says_so() -> None:
    stream = Stream()
    writer = LineWriter(stream, max_queued=3)
    for i in range(7):  # the loop never turns
        writer.msg(f'{{"n": {i}}}')
    written = stream.lines()
    assert [line.get("n") for line in written] == [0, 1, 2, None, 3, 4, 5, None]
    warnings = [line for line in written if line.get("event") == "log_queue_full"]
    assert warnings and all(w["level"] == "warning" and w["lines"] == 3 for w in warnings)
    assert writer.full == 2 and writer.lost == 0
    await asyncio.sleep(0)  # the last line goes with the loop's turn: none is dropped
    assert [line.get("n") for line in stream.lines()][-1] == 6
    assert writer.queued == 0


def test_outside_a_loop_lines_are_written_at_once() -> None:
    stream = Stream()
    writer = LineWriter(stream)
    writer.msg('{"n": 1}')
    assert stream.lines() == [{"n": 1}] and writer.queued == 0


async def test_a_line_from_another_thread_is_written_at_once_after_the_queue() -> None:
    stream = Stream()
    writer = LineWriter(stream)
    writer.msg('{"n": 1}')  # queued for the loop's next turn
    thread = threading.Thread(target=writer.msg, args=('{"n": 2}',))
    thread.start()
    thread.join()
    assert [line["n"] for line in stream.lines()] == [1, 2]
    await asyncio.sleep(0)
    assert [line["n"] for line in stream.lines()] == [1, 2]


def test_lines_the_stream_refuses_are_counted_and_reported(
    capsys: pytest.CaptureFixture[str],
) -> None:
    writer = LineWriter(Stream(broken=True))
    writer.msg('{"n": 1}')
    assert writer.lost == 1 and writer.queued == 0
    assert "1 log lines could not be written" in capsys.readouterr().err


def test_the_writers_counts_are_metrics(configured: Stream) -> None:
    writer = log_writer()
    assert writer is not None
    writer.full, writer.lost = 2, 5
    text = Metrics().render().decode()
    assert "mcp_authz_log_queue_full_total 2.0" in text
    assert "mcp_authz_log_lines_lost_total 5.0" in text


def test_the_decision_line_is_complete_and_holds_no_secret_field(configured: Stream) -> None:
    decide("/mcp?access_token=tok-123", fail_open=True)
    (line,) = configured.lines()
    assert list(line) == [*DECISION_FIELDS, "fail_open", "event", "level", "time"]
    assert line["event"] == "decision" and line["level"] == "info"
    assert line["path"] == "/mcp" and line["arg_keys"] == ["a", "b"]
    assert line["duration_ms"] == 0.123 and line["tool"] == "t" and line["fail_open"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["time"])
    assert "tok-123" not in configured.getvalue() and "secret" not in configured.getvalue()
    assert not {*DECISION_FIELDS, "fail_open", "approval_id"} & audit._SECRET_FIELDS
    # rendered as json.dumps renders it, as every other line
    raw = configured.getvalue().splitlines()[0]
    assert raw == json.dumps(line)


def test_the_decision_line_is_the_one_structlog_would_write(configured: Stream) -> None:
    decide()
    fast = configured.lines()[0]
    with structlog.testing.capture_logs() as logs:  # logging configured elsewhere
        decide()
    (event,) = logs
    assert event.pop("log_level") == "info"
    assert {k: v for k, v in fast.items() if k not in ("time", "level")} == event


def test_other_lines_go_through_the_same_writer_in_order(configured: Stream) -> None:
    log = structlog.get_logger("test")
    log.warning("first", token="tok-1", n=1)
    decide()
    log.info("third")
    lines = configured.lines()
    assert [line["event"] for line in lines] == ["first", "decision", "third"]
    assert "token" not in lines[0] and lines[0]["n"] == 1  # a secret field is dropped
    assert lines[0]["level"] == "warning"


def test_at_warning_level_no_decision_line_is_written() -> None:
    saved = structlog.get_config()
    saved_audit = (audit._writer, audit._processors, audit._decisions_logged)
    stream = Stream()
    writer = configure_logging("warning", stream)
    structlog.configure(cache_logger_on_first_use=False)  # as in `configured`
    try:
        decide()
        structlog.get_logger("test").warning("kept")
        assert [line["event"] for line in stream.lines()] == ["kept"]
    finally:
        atexit.unregister(writer.flush)
        structlog.configure(**saved)
        audit._writer, audit._processors, audit._decisions_logged = saved_audit


# -- the decision line written from pieces ------------------------------------------------


def _cases() -> Iterator[tuple[Any, ...]]:
    grants = [
        None,
        Grant("g1", "G1", "p"),
        Grant("g1", "other label", "p"),
        Grant("é\n", '"', "p"),
        Grant("oauth", "O", "p", token={"sub": 'ali"ce', "client_id": "c1", "scope": ["a"]}),
    ]
    requests = [
        None,
        McpRequest("tools/list", 1, False),
        McpRequest("tools/call", "x", False, tool="t", arguments={"b": 1, "a": 2, "ü\x00": 3}),
        McpRequest("tools/call", None, True, tool="t\u2028", arguments={}),
        McpRequest("notifications/initialized", None, True),
        McpRequest("tools/call", 7, False, tool="t", session_id='s"\u00e9\x01', arguments={"a": 1}),
    ]
    decisions = [
        Decision.allow(),
        Decision.deny(DenyKind.POLICY, "no", rule="/tools/t/deny_if/0"),
        Decision.deny(DenyKind.POLICY, "other message", rule="/tools/t/deny_if/0"),
        Decision.deny(DenyKind.RATE_LIMITED, "slow down", rule="/tools/t/limits/0", retry_after=3),
        Decision.deny(DenyKind.BAD_REQUEST, "", rule="(parse)"),
    ]
    contexts = [
        AuditContext("d1", None, "POST", "/mcp"),
        AuditContext("d2", 'r"\\\x7f', "post", "/mcp?token=x#y"),
        AuditContext("d3", "ünï", "GET", "/m\u00e9cp"),
        AuditContext("d4", None, "POST", "/mcp", trace_id="0af7651916cd43dd8448eb211c80319c"),
    ]
    for n, decision in enumerate(decisions):
        for grant in grants:
            for request in requests:
                ctx = contexts[n % len(contexts)]
                for hashed, duration, fail_open in (
                    (None, 0.0, False),
                    ("h" * 64, 0.12345, True),
                    ("h2", 12.0, False),
                    (None, 1e-7, True),
                ):
                    yield (
                        ctx,
                        decision,
                        grant,
                        request,
                        grant and grant.policy,
                        hashed,
                        duration,
                        fail_open,
                    )


def test_the_decision_line_from_pieces_is_the_encoded_event() -> None:
    seen = 0
    for case in _cases():
        fields = audit._decision_fields(*case)
        expected = json.dumps({**fields, "event": "decision", "level": "info", "time": "T"})
        # twice: the second line is written from the pieces the first one cached
        assert audit._decision_line(*case, "T") == expected
        assert audit._decision_line(*case, "T") == expected
        seen += 1
    assert seen == 5 * 5 * 6 * 4


def test_a_signed_in_caller_is_named_by_its_identity_only() -> None:
    """A grant found by a token's claims: the line names the subject and the client, and
    nothing else of the token."""
    grant = Grant("oauth", "O", "p", token={"sub": "alice", "client_id": "c1", "scope": ["x"]})
    case = (AuditContext("d1", None, "POST", "/mcp"), Decision.allow(), grant, None, "p", None)
    line = json.loads(audit._decision_line(*case, 1.0, False, "T"))
    assert (line["caller_sub"], line["caller_client_id"]) == ("alice", "c1")
    assert "scope" not in line and "token" not in line
    plain = (case[0], case[1], Grant("g1", "G1", "p"), None, "p", None)
    assert "caller_sub" not in json.loads(audit._decision_line(*plain, 1.0, False, "T"))


def test_the_decision_line_names_the_approval() -> None:
    decision = Decision.deny(DenyKind.POLICY, "held", rule="/tools/t/approve_if/0")
    decision = dataclasses.replace(decision, ticket=ApprovalTicket("a-1", "pending", 1.0))
    case = (AuditContext("d", None, "POST", "/mcp"), decision, None, None, None, None, 0.5, False)
    line = json.loads(audit._decision_line(*case, "T"))
    assert line["approval_id"] == "a-1"
    assert audit._decision_line(*case, "T") == json.dumps(
        {**audit._decision_fields(*case), "event": "decision", "level": "info", "time": "T"}
    )


def test_the_decision_line_carries_the_semantic_convention_names() -> None:
    request = McpRequest(
        "tools/call", 42, False, tool="image.generate", session_id="sess-1", arguments={"p": "v"}
    )
    ctx = AuditContext("d", None, "POST", "/mcp", trace_id="0af7651916cd43dd8448eb211c80319c")
    case = (ctx, Decision.allow(), Grant("g", "G", "p"), request, "p", None, 0.5, False)
    line = json.loads(audit._decision_line(*case, "T"))
    assert line["mcp.method.name"] == "tools/call" == line["method"]
    assert line["gen_ai.tool.name"] == "image.generate" == line["tool"]
    assert line["mcp.session.id"] == "sess-1"
    assert line["jsonrpc.request.id"] == "42"  # a string, as the convention has it
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert list(line)[-4:] == ["trace_id", "event", "level", "time"]
    assert '"v"' not in json.dumps(line)  # argument values stay out
    listing = McpRequest("tools/list", "abc", False)
    line = json.loads(
        audit._decision_line(ctx, Decision.allow(), None, listing, None, None, 1.0, False, "T")
    )
    assert line["gen_ai.tool.name"] is None and line["jsonrpc.request.id"] == "abc"
    assert line["mcp.session.id"] is None
    untraced = AuditContext("d", None, "POST", "/mcp")
    line = json.loads(
        audit._decision_line(untraced, Decision.allow(), None, None, None, None, 1.0, False, "T")
    )
    assert "trace_id" not in line and line["mcp.method.name"] is None
