"""Structured logging set-up, the writer every log line goes through, and the per-decision
audit event.

One JSON line per decision. The event carries argument *keys* only; tokens, the
Authorization header, argument values and query strings never enter an event (a query
string may carry a token: `path` is logged without it). A processor drops any field whose
name marks it as secret, as a second line of defence.

**Writing.** Every line (audit and operational) goes to one `LineWriter`: a line logged in
the event loop is queued and the queue is written, in one write and one flush, when the loop
next turns (`loop.call_soon`), so a decision's answer never waits for the log stream and a
busy sidecar writes many lines per system call. The queue is bounded (`MAX_QUEUED`): when a
line finds it full (the loop has not turned for that many lines), the writer writes the
queue at once, in the caller, counts it (`full`, exported as
`mcp_authz_log_queue_full_total`) and adds a warning line `log_queue_full`. So no line is
ever dropped: a full queue costs the caller a write, as every line did before. A line
logged outside the loop (start-up, another thread) is written at once, after what is
queued. What the stream refuses (a closed or broken pipe, a full disk) is counted (`lost`,
`mcp_authz_log_lines_lost_total`) and reported on stderr. At exit the queue is written
(`atexit`); only a process killed outright loses what one loop turn had queued.

**The decision event** is the hot one, so it is built complete (its time included) and
rendered straight into the writer, by the same renderer as every other line, without the
processor chain: its fields are fixed here (none is a secret field; the tests check it) and
no one binds context variables. When logging is configured by someone else (tests capturing
events), it is logged through structlog like any other event.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

import structlog

from authz.model import Approval, Decision, Grant, McpRequest, RequestId

__all__ = [
    "DECISION_FIELDS",
    "MAX_QUEUED",
    "AuditContext",
    "LineWriter",
    "configure_logging",
    "log_approval",
    "log_decision",
    "log_writer",
    "path_without_query",
    "rpc_id_text",
]


_SECRET_FIELDS = frozenset(
    {"token", "authorization", "arguments", "args", "params", "body", "raw_body", "password"}
)
_checked_fields: set[str] = set()
"""Field names already found not to be secret (names come from code, so the set is small)."""


def _drop_secrets(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if event.keys() <= _checked_fields:
        return event
    for key in list(event):
        if key.lower() in _SECRET_FIELDS:
            del event[key]
        else:
            _checked_fields.add(key)
    return event


_second = -1
_second_text = ""


def _now() -> str:
    """The current UTC time, ISO 8601 with microseconds: `2026-01-31T12:00:00.123456Z`."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"


def _timestamp(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event["time"] = _now()
    return event


def _fallback(value: Any) -> Any:
    """What JSON cannot hold: its `__structlog__()` if it has one, else its repr (as
    structlog's own renderer)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


_encode = json.JSONEncoder(default=_fallback).encode
_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring_ascii
"""How `_encode` writes a string (ASCII, escaped), on its own."""
"""Every line's renderer: `json.dumps`'s output (", " and ": " separators, ASCII), with one
encoder built once instead of one per line."""


def _render(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    return _encode(event)


MAX_QUEUED: Final = 4096
"""Lines a `LineWriter` holds for the next loop turn before it writes them in the caller."""


class LineWriter:
    """Where every log line goes (structlog's logger): see the module docstring."""

    def __init__(self, stream: TextIO, *, max_queued: int = MAX_QUEUED) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be positive")
        self._stream = stream
        self._max = max_queued
        self._queue: deque[str] = deque()
        self._pending: asyncio.AbstractEventLoop | None = None
        """The loop whose next turn will write the queue."""
        self._lock = threading.Lock()
        self.full = 0
        """Times a line found the queue full (and the queue was written at once)."""
        self.lost = 0
        """Lines the stream refused."""

    def msg(self, line: str) -> None:
        queue = self._queue
        queue.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: at once
            self.flush()
            return
        if len(queue) >= self._max:
            self._overflow()
        elif self._pending is not loop:  # (a loop closed before its turn leaves no trace)
            self._pending = loop
            loop.call_soon(self._turn, loop)

    debug = info = warning = warn = error = critical = exception = fatal = failure = log = msg

    @property
    def queued(self) -> int:
        """Lines waiting for the next write."""
        return len(self._queue)

    def flush(self) -> None:
        """Write every queued line now (idempotent; any thread)."""
        with self._lock:
            queue = self._queue
            lines = [queue.popleft() for _ in range(len(queue))]
            if not lines:
                return
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError) as exc:  # closed, broken pipe, full disk
                self.lost += len(lines)
                _complain(f"mcp-authz: {len(lines)} log lines could not be written: {exc!r}")

    def _turn(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending is loop:
            self._pending = None
        self.flush()

    def _overflow(self) -> None:
        self.full += 1
        waiting = len(self._queue)
        self.flush()
        warning = {
            "lines": waiting,
            "event": "log_queue_full",
            "level": "warning",
            "time": _now(),
        }
        self._queue.append(_encode(warning))
        self.flush()


def _complain(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr gone too: the count remains
        print(text, file=sys.stderr, flush=True)


_writer: LineWriter | None = None
_processors: list[Any] | None = None
_decisions_logged = True
"""Whether the configured level lets info events (decisions) through."""


def log_writer() -> LineWriter | None:
    """The writer `configure_logging` installed (None before it was called)."""
    return _writer


def configure_logging(level: str = "info", stream: TextIO | None = None) -> LineWriter:
    """Configure structlog once at start-up: JSON lines, UTC ISO time, written through a
    `LineWriter` on `stream` (stdout by default), which is returned."""
    global _writer, _processors, _decisions_logged
    if _writer is not None:
        _writer.flush()
        atexit.unregister(_writer.flush)
    levelno = logging.getLevelNamesMapping()[level.upper()]
    writer = LineWriter(stream or sys.stdout)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _timestamp,
        structlog.processors.format_exc_info,
        _drop_secrets,
        _render,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=lambda *_args: writer,
        cache_logger_on_first_use=True,
    )
    atexit.register(writer.flush)
    _writer, _processors, _decisions_logged = writer, processors, levelno <= logging.INFO
    return writer


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
    trace_id: str | None = None
    """The decision's trace (32 hex digits) when tracing is on (`authz.tracing`)."""


_audit = structlog.get_logger("mcp_authz.audit")

DECISION_FIELDS: Final = (
    "decision_id",
    "request_id",
    "http_method",
    "path",
    "grant_id",
    "grant_label",
    "method",
    "tool",
    "mcp.method.name",
    "gen_ai.tool.name",
    "mcp.session.id",
    "jsonrpc.request.id",
    "arg_keys",
    "decision",
    "kind",
    "rule",
    "message",
    "retry_after",
    "policy",
    "policy_hash",
    "duration_ms",
)
"""The decision event's fields, in order; `fail_open`, `approval_id`, `trace_id` and, for a
grant found by a token's claims, `caller_sub` and `caller_client_id` follow when set.
`mcp.method.name`, `gen_ai.tool.name`, `mcp.session.id` and `jsonrpc.request.id` are the
OpenTelemetry semantic-convention names for MCP (the method, the tool of a `tools/call`, the
`Mcp-Session-Id`, the JSON-RPC id as a string), beside the older names."""


def rpc_id_text(request_id: RequestId) -> str | None:
    """`jsonrpc.request.id`: the JSON-RPC id as a string (numbers in decimal), None for a
    notification or a null id."""
    if request_id is None or isinstance(request_id, bool):
        return None
    return request_id if isinstance(request_id, str) else str(request_id)


def _decision_fields(
    ctx: AuditContext,
    decision: Decision,
    grant: Grant | None,
    request: McpRequest | None,
    policy_name: str | None,
    policy_hash: str | None,
    duration_ms: float,
    fail_open: bool,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "decision_id": ctx.decision_id,
        "request_id": ctx.request_id,
        "http_method": ctx.http_method,
        "path": path_without_query(ctx.path),
        "grant_id": grant.id if grant else None,
        "grant_label": grant.label if grant else None,
        "method": request.method if request else None,
        "tool": request.tool if request else None,
        "mcp.method.name": request.method if request else None,
        "gen_ai.tool.name": request.tool if request else None,
        "mcp.session.id": request.session_id if request else None,
        "jsonrpc.request.id": rpc_id_text(request.id) if request else None,
        "arg_keys": sorted(request.arguments) if request else [],
        "decision": decision.outcome.value,
        "kind": decision.kind.value if decision.kind else None,
        "rule": decision.rule,
        "message": decision.message or None,
        "retry_after": decision.retry_after,
        "policy": policy_name,
        "policy_hash": policy_hash,
        "duration_ms": round(duration_ms, 3),
    }
    if fail_open:
        fields["fail_open"] = True
    if decision.ticket is not None:
        fields["approval_id"] = decision.ticket.id
    if ctx.trace_id is not None:
        fields["trace_id"] = ctx.trace_id
    fields.update(_caller(grant))
    return fields


def _caller(grant: Grant | None) -> dict[str, str]:
    """Who signed in, for a grant found by a token's claims: `caller_sub` and
    `caller_client_id` (the identity, never the token), when the token names them."""
    claims = grant.token if grant is not None else None
    if not claims:
        return {}
    found = {f"caller_{name}": claims.get(name) for name in ("sub", "client_id")}
    return {key: value for key, value in found.items() if isinstance(value, str)}


# The decision line is written from pieces: each piece is `_encode` of a few of its fields
# with the braces cut off, so that joined by ", " they are `_encode(fields)` exactly. The
# pieces that repeat (a grant, a method and tool, a decision's outcome and rule) are encoded
# once and kept; the values of one decision (its id, the request's id and path, the argument
# names, the duration, the time) are quoted by the encoder's own string function.

_PIECES_KEPT: Final = 4096
"""Cached pieces per kind; all forgotten at once past it. Some keys carry what a client
chose (a tool name, a URI in a denial's message), so the bound, not the key space, limits
the memory: a client that sends ever new names only makes the cache start over."""
_grant_pieces: dict[tuple[str, str] | None, str] = {}
_call_pieces: dict[tuple[str, str | None] | None, str] = {}
_outcome_pieces: dict[tuple[Any, ...], str] = {}


def _piece(cache: dict[Any, str], key: Any, fields: dict[str, Any]) -> str:
    if len(cache) >= _PIECES_KEPT:
        cache.clear()
    piece = cache[key] = _encode(fields)[1:-1]
    return piece


def _number(value: float) -> str:
    """A float as `_encode` writes it."""
    return float.__repr__(value) if type(value) is float and value - value == 0 else _encode(value)


def _decision_line(
    ctx: AuditContext,
    decision: Decision,
    grant: Grant | None,
    request: McpRequest | None,
    policy_name: str | None,
    policy_hash: str | None,
    duration_ms: float,
    fail_open: bool,
    time_text: str,
) -> str:
    """`_encode` of the decision event (`_decision_fields`, then event, level and `time`),
    written from cached pieces."""
    request_id = ctx.request_id
    head = (
        f'{{"decision_id": {_quote(ctx.decision_id)}, '
        f'"request_id": {"null" if request_id is None else _quote(request_id)}, '
        f'"http_method": {_quote(ctx.http_method)}, '
        f'"path": {_quote(path_without_query(ctx.path))}, '
    )
    key: Any = (grant.id, grant.label) if grant else None
    granted = _grant_pieces.get(key)
    if granted is None:
        granted = _piece(
            _grant_pieces,
            key,
            {"grant_id": grant.id, "grant_label": grant.label}
            if grant
            else {"grant_id": None, "grant_label": None},
        )
    key = (request.method, request.tool) if request else None
    called = _call_pieces.get(key)
    if called is None:
        called = _piece(
            _call_pieces,
            key,
            {
                "method": request.method,
                "tool": request.tool,
                "mcp.method.name": request.method,
                "gen_ai.tool.name": request.tool,
            }
            if request
            else {"method": None, "tool": None, "mcp.method.name": None, "gen_ai.tool.name": None},
        )
    session = request.session_id if request else None
    rpc_id = rpc_id_text(request.id) if request else None
    ids = (
        f'"mcp.session.id": {"null" if session is None else _quote(session)}, '
        f'"jsonrpc.request.id": {"null" if rpc_id is None else _quote(rpc_id)}'
    )
    names = sorted(request.arguments) if request else ()
    arg_keys = f"[{', '.join(map(_quote, names))}]" if names else "[]"
    kind = decision.kind.value if decision.kind else None
    key = (
        decision.outcome,
        kind,
        decision.rule,
        decision.message,
        decision.retry_after,
        policy_name,
        policy_hash,
    )
    decided = _outcome_pieces.get(key)
    if decided is None:
        decided = _piece(
            _outcome_pieces,
            key,
            {
                "decision": decision.outcome.value,
                "kind": kind,
                "rule": decision.rule,
                "message": decision.message or None,
                "retry_after": decision.retry_after,
                "policy": policy_name,
                "policy_hash": policy_hash,
            },
        )
    tail = ""
    if fail_open:
        tail = ', "fail_open": true'
    if decision.ticket is not None:
        tail += f', "approval_id": {_quote(decision.ticket.id)}'
    if ctx.trace_id is not None:
        tail += f', "trace_id": {_quote(ctx.trace_id)}'
    if grant is not None and grant.token:
        for name, value in _caller(grant).items():
            tail += f", {_quote(name)}: {_quote(value)}"
    return (
        f"{head}{granted}, {called}, {ids}, "
        f'"arg_keys": {arg_keys}, {decided}, '
        f'"duration_ms": {_number(round(duration_ms, 3))}{tail}, '
        f'"event": "decision", "level": "info", "time": {_quote(time_text)}}}'
    )


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
    """Write the audit event of one decision (`DECISION_FIELDS`, then `fail_open`,
    `approval_id` and `trace_id` when they apply)."""
    writer = _writer
    processors = structlog.get_config()["processors"]
    # still the chain configure_logging set up (structlog.testing edits the list in place)
    if writer is not None and _processors is processors and _processors[-1] is _render:
        if _decisions_logged:
            writer.msg(
                _decision_line(
                    ctx,
                    decision,
                    grant,
                    request,
                    policy_name,
                    policy_hash,
                    duration_ms,
                    fail_open,
                    _now(),
                )
            )
        return
    _audit.info(
        "decision",
        **_decision_fields(
            ctx, decision, grant, request, policy_name, policy_hash, duration_ms, fail_open
        ),
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
