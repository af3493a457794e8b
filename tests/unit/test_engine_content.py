"""Resources and prompts under policy (authz/engine.py): which requests for server content a
policy admits, the entries that judge them, their pointers, quota claims and approvals, as
tables of (policy, request, expected decision, expected rule). Requests are parsed from the
JSON an MCP client sends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from authz.approvals.base import ApprovalRequest
from authz.approvals.memory import MemoryApprovalStore
from authz.engine import decide, judge_approval
from authz.mcp import parse_message
from authz.model import CONTENT_METHODS, DenyKind, Grant, McpRequest
from authz.policy import load_policy
from tests.unit.policy.test_document_content import CONTENT, SEED

GRANT = Grant(id="g-1", label="alice", policy="content")


def message(method: str, params: dict[str, Any] | None = None, rid: int | None = 1) -> McpRequest:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        body["id"] = rid
    if params is not None:
        body["params"] = params
    return parse_message(json.dumps(body).encode(), session_id="s-1")


def read(uri: str) -> McpRequest:
    return message("resources/read", {"uri": uri})


def subscribe(uri: str) -> McpRequest:
    return message("resources/subscribe", {"uri": uri})


def get(name: str, **arguments: str) -> McpRequest:
    params: dict[str, Any] = {"name": name}
    if arguments:
        params["arguments"] = arguments
    return message("prompts/get", params)


def complete(kind: str, ref: str) -> McpRequest:
    key = "name" if kind == "prompt" else "uri"
    return message(
        "completion/complete",
        {"ref": {"type": f"ref/{kind}", key: ref}, "argument": {"name": "a", "value": ""}},
    )


def call(tool: str) -> McpRequest:
    return message("tools/call", {"name": tool, "arguments": {}})


@dataclass
class Case:
    id: str
    policy: Any
    request: McpRequest
    allowed: bool
    rule: str | None = None
    message: str | None = None


ALLOW = '{"version":"1"}'
METHODS_ALLOW = {"version": "1", "default": "deny", "methods": {"default": "allow"}}
DOCS = "/resources/docs:~1~1{name}"
SRV = "/resources/file:~1~1~1srv~1{+path}"

CASES = [
    # the seed's promise: under default deny, nothing of the server's content without a rule
    Case(
        "seed-read",
        SEED,
        read("file:///etc/passwd"),
        False,
        "(default deny)",
        "resource 'file:///etc/passwd' is not permitted by policy",
    ),
    Case("seed-subscribe", SEED, subscribe("file:///etc/passwd"), False, "(default deny)"),
    Case(
        "seed-get",
        SEED,
        get("internal"),
        False,
        "(default deny)",
        "prompt 'internal' is not permitted by policy",
    ),
    Case("seed-complete-prompt", SEED, complete("prompt", "internal"), False, "(default deny)"),
    Case("seed-complete-resource", SEED, complete("resource", "db://{t}"), False, "(default deny)"),
    # default allow: nothing changes
    Case("allow-read", ALLOW, read("file:///etc/passwd"), True),
    Case("allow-get", ALLOW, get("internal", x="1"), True),
    Case("allow-complete", ALLOW, complete("resource", "db://{t}"), True),
    # a methods section decides admission as it always did
    Case("methods-read", METHODS_ALLOW, read("file:///etc/passwd"), True),
    Case("methods-get", METHODS_ALLOW, get("internal"), True),
    Case(
        "methods-deny",
        {**METHODS_ALLOW, "methods": {"deny": ["resources/read"]}},
        read("file:///a"),
        False,
        "/methods/deny/0",
        "method 'resources/read' is not permitted by policy",
    ),
    Case(
        "methods-default-deny",
        {"version": "1", "methods": {"default": "deny", "allow": ["prompts/get"]}},
        read("file:///a"),
        False,
        "/methods/default",
    ),
    Case(
        "methods-admit-then-entry",
        {
            **METHODS_ALLOW,
            "prompts": {"p": {"deny_if": [{"conditions": [], "on_deny": "no p"}]}},
        },
        get("p"),
        False,
        "/prompts/p/deny_if/0",
        "no p",
    ),
    # resources: every matching pattern, then "*"
    Case("docs", CONTENT, read("docs://readme"), True),
    Case(
        "docs-deny-if",
        CONTENT,
        read("docs://internal-notes"),
        False,
        f"{DOCS}/deny_if/0",
        "resource 'docs://internal-notes' is denied when args.name regex '^internal'",
    ),
    # the condition sees the value the server passes to its function: decoded
    Case("docs-decoded", CONTENT, read("docs://%69nternal"), False, f"{DOCS}/deny_if/0"),
    Case(
        "docs-ambiguous",
        CONTENT,
        read("docs://a,b"),
        False,
        DOCS,
        "resource 'docs://a,b' is denied: the MCP server could read it otherwise than the "
        "pattern 'docs://{name}' does (an empty value, or a character the server ends a value "
        "at); ask for the URI the server lists",
    ),
    Case("docs-empty", CONTENT, read("docs://"), False, DOCS),
    Case("srv-md", CONTENT, read("file:///srv/notes/a.md"), True),
    Case(
        "srv-txt",
        CONTENT,
        read("file:///srv/a.txt"),
        False,
        f"{SRV}/require/0",
        "resource 'file:///srv/a.txt' requires args.uri regex '\\\\.md$'",
    ),
    Case("srv-subscribe", CONTENT, subscribe("file:///srv/a.txt"), False, f"{SRV}/require/0"),
    Case("star-only", CONTENT, read("other://x"), True),
    Case(
        "hidden",
        CONTENT,
        read("file:///etc/passwd"),
        False,
        "(hidden)",
        "resource 'file:///etc/passwd' is hidden by policy",
    ),
    # prompts: own entry, then "*"
    Case("prompt", CONTENT, get("summarize", style="short"), True),
    Case(
        "prompt-require",
        CONTENT,
        get("summarize"),
        False,
        "/prompts/summarize/require/0",
        'prompt \'summarize\' requires args.style in ["short", "long"]',
    ),
    Case("prompt-star", CONTENT, get("anything"), True),
    Case("prompt-hidden", CONTENT, get("draft"), False, "(hidden)"),
    # completion: admitted when its reference would be; no conditions, no approval
    Case("complete-prompt", CONTENT, complete("prompt", "summarize"), True),
    Case("complete-hidden", CONTENT, complete("prompt", "draft"), False, "(hidden)"),
    Case("complete-template", CONTENT, complete("resource", "docs://{name}"), True),
    Case("complete-uri", CONTENT, complete("resource", "docs://readme"), True),
    Case("complete-hidden-template", CONTENT, complete("resource", "file:///etc/{x}"), False),
    # tools are judged as before
    Case("tool-unlisted", CONTENT, call("t.other"), False, "(default deny)"),
    Case("tool-hidden", CONTENT, call("t.secret"), False, "(hidden)"),
]

NO_STAR: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "resources": {
        "docs://{name}": {},
        "secret://{key}": {"deny_if": [{"conditions": [], "on_deny": "never secrets"}]},
        "vault://{key}": {
            "deny_if": [{"conditions": [{"path": "args.key", "op": "eq", "value": "k"}]}]
        },
    },
}
CASES += [
    Case("template-text-unlisted", NO_STAR, complete("resource", "docs://{other}"), False),
    Case("template-text-equal", NO_STAR, complete("resource", "docs://{name}"), True),
    Case(
        "template-always-denied",
        NO_STAR,
        complete("resource", "secret://{key}"),
        False,
        "/resources/secret:~1~1{key}/deny_if/0",
        "never secrets",
    ),
    # conditions are not evaluated for a completion: only an entry that always denies
    Case("template-conditional", NO_STAR, complete("resource", "vault://{key}"), True),
    Case("no-star-unmatched", NO_STAR, read("other://x"), False, "(default deny)"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_content_decisions(case: Case) -> None:
    raw = case.policy if isinstance(case.policy, str) else json.dumps(case.policy)
    decision = decide(load_policy(raw, name="content"), GRANT, case.request)
    assert decision.allowed is case.allowed, decision
    if case.rule is not None:
        assert decision.rule == case.rule
    if case.message is not None:
        assert decision.message == case.message
    if not case.allowed:
        assert decision.kind is DenyKind.POLICY and not decision.claims


@pytest.mark.parametrize(
    "request_",
    [
        message("initialize", {"protocolVersion": "2025-11-25", "capabilities": {}}),
        message("ping"),
        message("notifications/initialized", rid=None),
        message("tools/list"),
        message("resources/list"),
        message("resources/templates/list"),
        message("prompts/list"),
        message("resources/unsubscribe", {"uri": "file:///a"}),
    ],
    ids=lambda r: r.method,
)
def test_plumbing_stays_allowed_under_default_deny(request_: McpRequest) -> None:
    assert request_.method not in CONTENT_METHODS
    assert decide(load_policy(SEED, name="seed"), GRANT, request_).allowed


def test_the_content_methods_are_the_four_that_read_or_run_content() -> None:
    expected = {"resources/read", "resources/subscribe", "prompts/get", "completion/complete"}
    assert expected == CONTENT_METHODS


def test_limits_of_every_matching_entry_are_claimed_together() -> None:
    policy = load_policy(json.dumps(CONTENT), name="content")
    decision = decide(policy, GRANT, read("docs://readme"))
    assert [(c.counter, c.scope, c.scope_key, c.rule) for c in decision.claims] == [
        ("reads", "grant", ("g-1",), f"{DOCS}/limits/reads"),
        ("any", "global", (), "/resources/*/limits/any"),
    ]
    star = decide(policy, GRANT, read("other://x"))
    assert [c.rule for c in star.claims] == ["/resources/*/limits/any"]
    assert not decide(policy, GRANT, complete("resource", "docs://readme")).claims


def test_a_counter_name_is_one_bucket_across_sections() -> None:
    """Counters of one policy that share a name, scope and window share one bucket, tools
    and resources alike (the README's bucket rule)."""
    limit = {"counter": "shared", "window": "minute", "max": 5, "scope": "grant"}
    policy = load_policy(
        json.dumps(
            {
                "version": "1",
                "tools": {"t": {"limits": [limit]}},
                "resources": {"docs://{name}": {"limits": [limit]}},
                "prompts": {"p": {"limits": [limit]}},
            }
        ),
        name="content",
    )
    (tool,) = decide(policy, GRANT, call("t")).claims
    (resource,) = decide(policy, GRANT, read("docs://a")).claims
    (prompt,) = decide(policy, GRANT, get("p")).claims
    assert tool.bucket == resource.bucket == prompt.bucket
    assert (tool.rule, resource.rule, prompt.rule) == (
        "/tools/t/limits/shared",
        f"{DOCS}/limits/shared",
        "/prompts/p/limits/shared",
    )


def test_every_matching_pattern_judges_in_document_order() -> None:
    policy = load_policy(
        json.dumps(
            {
                "version": "1",
                "default": "deny",
                "resources": {
                    "db://{table}/rows/{id}": {
                        "deny_if": [{"conditions": [{"path": "args.id", "op": "eq", "value": "0"}]}]
                    },
                    "db://users/rows/{id}": {"require_approval": True},
                    "db://{+rest}": {
                        "deny_if": [
                            {
                                "conditions": [
                                    {"path": "args.rest", "op": "regex", "value": "^admin"}
                                ]
                            }
                        ]
                    },
                },
            }
        ),
        name="content",
    )
    zero = decide(policy, GRANT, read("db://users/rows/0"))
    assert zero.rule == "/resources/db:~1~1{table}~1rows~1{id}/deny_if/0"
    held = decide(policy, GRANT, read("db://users/rows/7"))
    assert held.allowed and held.approval is not None
    assert held.approval.rule == "/resources/db:~1~1users~1rows~1{id}/require_approval"
    admin = decide(policy, GRANT, read("db://admin/rows/1"))
    assert admin.rule == "/resources/db:~1~1{+rest}/deny_if/0"
    assert decide(policy, GRANT, read("db://orders/rows/1")).allowed


def test_messages_never_echo_a_long_uri_or_a_control_character() -> None:
    policy = load_policy(SEED, name="seed")
    long = "file:///" + "a" * 300
    decision = decide(policy, GRANT, read(long))
    assert long not in decision.message and "(308 characters)" in decision.message
    assert f"{long[:200]!r}…" in decision.message
    for uri in ("file:///a\nb", "file:///a\x00b", "file:///a\x1b[2Jb", "file:///a\u202eb"):
        text = decide(policy, GRANT, read(uri)).message
        assert uri not in text and text.isprintable(), text
    named = decide(policy, GRANT, get("evil\r\nX-Injected: 1"))
    assert "\r" not in named.message and "\n" not in named.message


def test_messages_and_approval_targets_never_show_a_uris_query_or_fragment() -> None:
    """A query or fragment may carry a credential: like the audit event's `path`, a URI in a
    message or an approval's target (which the approval events log) stops before it."""
    seed = load_policy(SEED, name="seed")
    for uri in ("https://api/x?token=s3cr3t", "https://api/x#s3cr3t", "x?a#s3cr3t"):
        message = decide(seed, GRANT, read(uri)).message
        assert "s3cr3t" not in message and "…" in message, message
    policy_all = load_policy(
        json.dumps({"version": "1", "resources": {"*": {"require_approval": True}}}), name="a"
    )
    held = decide(policy_all, GRANT, read("db://rows?key=s3cr3t")).approval
    assert held is not None and held.target is not None and held.subject is not None
    assert "s3cr3t" not in held.target and "s3cr3t" not in held.subject
    assert held.target == "resources/read 'db://rows?…'"


def test_a_held_content_request_names_what_it_holds() -> None:
    policy = load_policy(json.dumps(CONTENT), name="content")
    resource = decide(policy, GRANT, read("db://orders"))
    assert resource.allowed and resource.approval is not None
    assert resource.approval.rule == "/resources/db:~1~1orders/require_approval"
    assert resource.approval.target == "resources/read db://orders"
    assert resource.approval.subject == "resource 'db://orders'"
    prompt = decide(policy, GRANT, get("anything", topic="x"))
    assert prompt.approval is not None and prompt.approval.rule == "/prompts/*/approve_if/0"
    assert prompt.approval.target == "prompts/get anything"
    # a completion is never held, a tool call's requirement names no target
    assert decide(policy, GRANT, complete("prompt", "anything")).approval is None
    long = "db://" + "x" * 300
    policy_all = load_policy(
        json.dumps({"version": "1", "resources": {"*": {"require_approval": True}}}), name="a"
    )
    held = decide(policy_all, GRANT, read(long)).approval
    assert held is not None and held.target is not None
    assert long not in held.target and held.target.startswith("resources/read 'db://x")


async def test_judge_approval_speaks_of_the_request() -> None:
    policy = load_policy(json.dumps(CONTENT), name="content")
    decision = decide(policy, GRANT, get("anything", topic="x"))
    assert decision.approval is not None and decision.approval.target is not None
    store = MemoryApprovalStore()
    ask = ApprovalRequest(
        "g-1",
        "alice",
        "content",
        policy.content_hash,
        decision.approval.target,
        {"topic": "x"},
        decision.approval.rule,
        60,
    )
    pending, _ = await store.request(ask, 100.0)
    held = judge_approval(decision, decision.approval.target, pending)
    assert held.kind is DenyKind.APPROVAL_REQUIRED and held.rule == "/prompts/*/approve_if/0"
    assert held.message.startswith("prompt 'anything' needs a person's approval (every prompt)")
    assert pending.id in held.message and "send the identical request again" in held.message
    denied = await store.resolve(pending.id, approve=False, approver="bob", reason="no", now=101)
    out = judge_approval(decision, decision.approval.target, denied)
    assert out.kind is DenyKind.POLICY
    assert out.message.startswith("a person denied this request for prompt 'anything'")
    assert out.message.endswith("reason: no")
