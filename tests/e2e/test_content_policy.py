"""Resources, prompts and completions under policy, end to end: the real Envoy (both ext_authz
transports), the real sidecar, the real MCP SDK client, and a real SDK server with static and
templated resources, prompts and a completion handler (tests/e2e/content_upstream.py).

Ground truth is the server's own record of what it served (the URI or name and arguments as
the SDK passed them to the handler, and the file a template really read), never the sidecar's
answer.

- `default: deny` covers content: a grant of the seed's shape (one tool) cannot read a
  resource (static or templated), subscribe, get a prompt or ask for a completion; each is a
  readable JSON-RPC error (403, `(default deny)`); `initialize`, `ping`, `resources/unsubscribe`
  and the four listings still work.
- A policy's `resources` and `prompts` entries open exactly what they name; conditions on
  `args.uri`, template variables and prompt arguments decide as written; hostile spellings of
  a URI (percent-encoding, dot segments, trailing slash, query, fragment, case, look-alikes,
  control characters) never make the server serve what the policy denies.
- A limit on `resources/read` holds under concurrency (memory and Redis counters); an
  approval holds a prompt and a resource until a person approves, then the request runs once.
- Listings (`resources/list`, `resources/templates/list`, `prompts/list`) lose hidden and
  never-allowed entries in SSE and JSON answers; `default: allow` changes nothing; a
  `methods` section keeps deciding as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import (
    CallToolResult,
    PromptReference,
    ResourceTemplateReference,
    TextContent,
    TextResourceContents,
)

from authz.config.grants import hash_token
from authz.devstack.stack import Stack
from tests.e2e import content_upstream as upstream
from tests.e2e.conftest import mcp_client, token_for, wait_for_fresh_window
from tests.e2e.mcp_raw import messages, session
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DENIED = "[POLICY DENIED] "
HELD = "[APPROVAL REQUIRED] "
FORBIDDEN = -32003
"""The JSON-RPC code of a policy denial that is not a tool result (authz/envoy/denial.py)."""
DEFAULT_DENY = "(default deny)"
HIDDEN = "(hidden)"
APPROVER_TOKEN = "content-approver-token"
APPROVAL_ID = re.compile(r"apr_[0-9a-f]{24}")
APPROVAL_HEADER = "x-mcp-authz-approval-id"
JSON_HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}

# RFC 6901 pointers of the entries below ("/" → "~1")
FILE_RULE = "/resources/file:~1~1~1data~1{name}"
USERS_RULE = "/resources/users:~1~1{id}~1profile"
NOTES_RULE = "/resources/notes:~1~1{+path}"
SECRET_RULE = "/resources/secret:~1~1db~1password"


def condition(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"conditions": [{"path": path, "op": op, "value": value}]}


SEED = {"version": "1", "default": "deny", "tools": {"echo": {}}}
"""The seed policy's shape: one tool, everything else on the server denied."""

READER = {
    "version": "1",
    "default": "deny",
    "tools": {"echo": {}},
    "resources": {
        "docs://guide": {},
        "file:///data/{name}": {"deny_if": [condition("args.name", "regex", "^secret")]},
        "users://{id}/profile": {"require": [condition("args.id", "in", ["alice", "bob"])]},
        "notes://{+path}": {"deny_if": [condition("args.path", "regex", "^private(/|$)")]},
    },
    "prompts": {"summarize": {"deny_if": [condition("args.topic", "regex", "(?i)password")]}},
}

POLICIES: dict[str, dict[str, Any]] = {
    "seed": SEED,
    "reader": READER,
    "open": {"version": "1", "default": "allow"},
    "hider": {
        "version": "1",
        "default": "allow",
        "hide": {
            "tools": ["wipe"],
            "resources": ["secret://db/password", "users://{id}/profile"],
            "prompts": ["internal"],
        },
    },
    "wildcard": {
        "version": "1",
        "default": "deny",
        "resources": {"*": {"deny_if": [condition("args.uri", "regex", "^secret:")]}},
        "prompts": {"*": {"deny_if": [condition("args.topic", "regex", "(?i)secret")]}},
    },
    "public-notes": {
        "version": "1",
        "default": "deny",
        "resources": {"notes://public/{name}": {}},
    },
    "exact": {
        "version": "1",
        "default": "deny",
        "resources": {
            "file:///data/{name}": {},
            "file:///data/secret.txt": {"deny_if": [{"conditions": []}]},
        },
    },
    "methods": {
        "version": "1",
        "default": "deny",
        "tools": {"echo": {}},
        "methods": {"default": "allow", "deny": ["prompts/get"]},
        "resources": {
            "file:///data/{name}": {"deny_if": [condition("args.name", "regex", "^secret")]}
        },
    },
    "limited": {
        "version": "1",
        "default": "deny",
        "resources": {
            "users://{id}/profile": {
                "limits": [
                    {"counter": "profile_reads", "window": "minute", "max": 5, "scope": "grant"}
                ]
            }
        },
    },
    "approvals": {
        "version": "1",
        "default": "deny",
        "prompts": {
            "announce": {
                "approve_if": [
                    {"name": "company-wide", **condition("args.audience", "eq", "everyone")}
                ]
            }
        },
        "resources": {"secret://db/password": {"require_approval": {"ttl": 120}}},
    },
}
GRANTS = {name: name for name in POLICIES}


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc, indent=2))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": policy}
        for gid, policy in GRANTS.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}, indent=2))
    approvers = [{"id": "alice", "label": "Alice", "token_sha256": hash_token(APPROVER_TOKEN)}]
    (root / "approvers.json").write_text(json.dumps({"version": "1", "approvers": approvers}))
    return root


@dataclass
class ContentStack(Stack):
    """The real Envoy and sidecar in front of tests/e2e/content_upstream.py."""

    record: Path = field(default_factory=Path)
    data: Path = field(default_factory=Path)
    bulk: int = 0

    def start_upstream(self) -> None:
        argv = [sys.executable, "-m", "tests.e2e.content_upstream"]
        argv += ["--port", str(self.ports.upstream), "--record", str(self.record)]
        argv += ["--data", str(self.data)]
        if self.upstream_json_response:
            argv.append("--json-response")
        argv += ["--bulk", str(self.bulk)]
        self._spawn("upstream", argv, {**self.upstream_env(), "PYTHONPATH": str(ROOT)})
        self._wait_tcp("upstream", self.ports.upstream)


def make_stack(
    base: Path,
    transport: str,
    *,
    json_mode: bool = False,
    sidecar_args: tuple[str, ...] = (),
    bulk: int = 0,
) -> ContentStack:
    record = base / "served.jsonl"
    record.touch()
    return ContentStack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        offline_gemini=False,
        upstream_json_response=json_mode,
        sidecar_args=sidecar_args,
        reload_interval=0.2,
        transport=transport,
        record=record,
        data=base / "data",
        bulk=bulk,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[ContentStack]:
    """The server answering in SSE (the SDK's default), memory counters."""
    the_stack = make_stack(tmp_path_factory.mktemp("content-sse"), transport)
    with the_stack:
        yield the_stack


@pytest.fixture(scope="module")
def json_upstream(
    tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[ContentStack]:
    """The server answering in JSON (`json_response=True`)."""
    base = tmp_path_factory.mktemp("content-json")
    the_stack = make_stack(base, transport, json_mode=True)
    with the_stack:
        yield the_stack


@pytest.fixture(scope="module")
def redis_stack(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer, transport: str
) -> Iterator[ContentStack]:
    """Counters in a real Redis (one server for both transports' stacks, emptied first)."""
    redis.command("FLUSHALL")
    base = tmp_path_factory.mktemp("content-redis")
    the_stack = make_stack(base, transport, sidecar_args=("--redis-url", redis.url))
    with the_stack:
        yield the_stack


@pytest.fixture(scope="module", params=["sse", "json"])
def big_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, transport: str
) -> Iterator[ContentStack]:
    """The server with 30 more resources: a `resources/list` answer over the 1 MiB the
    response phase reads."""
    base = tmp_path_factory.mktemp(f"content-big-{request.param}")
    the_stack = make_stack(base, transport, json_mode=request.param == "json", bulk=30)
    with the_stack:
        yield the_stack


# -- helpers ------------------------------------------------------------------------------------


def served(stack: ContentStack) -> list[dict[str, Any]]:
    """Everything the server served so far, in order (its own record)."""
    lines = stack.record.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def text_of(result: CallToolResult) -> str:
    return " ".join(part.text for part in result.content if isinstance(part, TextContent))


def assert_denied(err: MCPError, rule: str, prefix: str = DENIED) -> None:
    """A readable JSON-RPC policy denial naming `rule`."""
    assert err.code == FORBIDDEN, (err.code, err.message)
    assert err.message.startswith(prefix), err.message
    assert err.message.endswith(f"(rule: {rule})"), err.message


async def read(client: Client, uri: str) -> str:
    result = await client.read_resource(uri, cache_mode="bypass")
    content = result.contents[0]
    assert isinstance(content, TextResourceContents), content
    return content.text


async def subscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.subscribe_resource(uri)


async def unsubscribe(client: Client, uri: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await client.unsubscribe_resource(uri)


async def prompt_text(client: Client, name: str, arguments: dict[str, str] | None = None) -> str:
    result = await client.get_prompt(name, arguments)
    content = result.messages[0].content
    assert isinstance(content, TextContent), content
    return content.text


async def complete_prompt(client: Client, name: str, argument: str, value: str) -> list[str]:
    result = await client.complete(PromptReference(name=name), {"name": argument, "value": value})
    return result.completion.values


async def complete_resource(client: Client, uri: str, argument: str, value: str) -> list[str]:
    reference = ResourceTemplateReference(uri=uri)
    result = await client.complete(reference, {"name": argument, "value": value})
    return result.completion.values


def post(stack: Stack, grant: str, method: str, params: dict[str, Any], rid: int = 7) -> Any:
    """One JSON-RPC request as raw HTTP through Envoy: (status, headers, decoded body)."""
    body = json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    headers = {**JSON_HEADERS, "authorization": f"Bearer {token_for(grant)}"}
    status, answer_headers, raw = stack.post_raw(body.encode(), headers)
    return status, answer_headers, json.loads(raw) if raw else None


# Every content method, as (method, params) of one request.
CONTENT_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("resources/read", {"uri": "docs://guide"}),
    ("resources/read", {"uri": "file:///data/public.txt"}),
    ("resources/subscribe", {"uri": "docs://guide"}),
    ("prompts/get", {"name": "summarize", "arguments": {"topic": "cats"}}),
    (
        "completion/complete",
        {
            "ref": {"type": "ref/prompt", "name": "summarize"},
            "argument": {"name": "topic", "value": "c"},
        },
    ),
    (
        "completion/complete",
        {
            "ref": {"type": "ref/resource", "uri": "file:///data/{name}"},
            "argument": {"name": "name", "value": "r"},
        },
    ),
]


# -- default: deny covers content ----------------------------------------------------------------


async def test_the_seed_policy_denies_every_content_method(stack: ContentStack) -> None:
    before = len(served(stack))
    async with mcp_client(stack, token_for("seed")) as client:
        await client.send_ping()
        denials: list[MCPError] = []
        for uri in (
            "docs://guide",
            "file:///data/report.txt",  # static
            "file:///data/public.txt",  # templated
            "users://alice/profile",
            "secret://db/password",
        ):
            with pytest.raises(MCPError) as caught:
                await read(client, uri)
            assert uri in caught.value.message, caught.value.message
            denials.append(caught.value)
        with pytest.raises(MCPError) as caught:
            await subscribe(client, "docs://guide")
        denials.append(caught.value)
        with pytest.raises(MCPError) as caught:
            await prompt_text(client, "summarize", {"topic": "cats"})
        assert "summarize" in caught.value.message
        denials.append(caught.value)
        with pytest.raises(MCPError) as caught:
            await prompt_text(client, "internal")
        denials.append(caught.value)
        with pytest.raises(MCPError) as caught:
            await complete_prompt(client, "summarize", "topic", "c")
        denials.append(caught.value)
        with pytest.raises(MCPError) as caught:
            await complete_resource(client, "file:///data/{name}", "name", "r")
        denials.append(caught.value)
        for err in denials:
            assert_denied(err, DEFAULT_DENY)
        # the one tool still runs, and unsubscribing is plumbing
        result = await client.call_tool("echo", {"text": "still here"})
        assert not result.is_error, text_of(result)
        await unsubscribe(client, "docs://guide")
        await client.send_ping()
    assert served(stack)[before:] == [
        {"kind": "tool", "name": "echo", "args": {"text": "still here"}},
        {"kind": "unsubscribe", "uri": "docs://guide"},
    ]


async def test_the_seed_policy_denies_content_in_the_stateless_era(stack: ContentStack) -> None:
    """The same denials reach a 2026-07-28 client (no session, `Mcp-Name` headers)."""
    before = len(served(stack))
    async with mcp_client(stack, token_for("seed"), mode="2026-07-28") as client:
        with pytest.raises(MCPError) as read_denied:
            await read(client, "file:///data/public.txt")
        with pytest.raises(MCPError) as get_denied:
            await prompt_text(client, "summarize", {"topic": "cats"})
        with pytest.raises(MCPError) as complete_denied:
            await complete_prompt(client, "summarize", "topic", "c")
        result = await client.call_tool("echo", {"text": "stateless"})
        assert not result.is_error, text_of(result)
    for err in (read_denied.value, get_denied.value, complete_denied.value):
        assert_denied(err, DEFAULT_DENY)
    assert served(stack)[before:] == [
        {"kind": "tool", "name": "echo", "args": {"text": "stateless"}}
    ]


async def test_the_seed_policy_keeps_the_listings_working(stack: ContentStack) -> None:
    """initialize, ping and the four listings answer; content the grant can never use is not
    listed (under `default: deny` without entries, that is all of it); tools are untouched."""
    async with mcp_client(stack, token_for("seed")) as client:
        await client.send_ping()
        tools = await client.list_tools(cache_mode="bypass")
        resources = await client.list_resources(cache_mode="bypass")
        templates = await client.list_resource_templates(cache_mode="bypass")
        prompts = await client.list_prompts(cache_mode="bypass")
    assert {tool.name for tool in tools.tools} == set(upstream.TOOLS)
    assert resources.resources == []
    assert templates.resource_templates == []
    assert prompts.prompts == []


@pytest.mark.parametrize(
    ("method", "params"),
    CONTENT_REQUESTS,
    ids=[f"{m}-{i}" for i, (m, _) in enumerate(CONTENT_REQUESTS)],
)
async def test_a_content_denial_is_a_403_jsonrpc_error(
    stack: ContentStack, method: str, params: dict[str, Any]
) -> None:
    before = served(stack)
    status, headers, body = post(stack, "seed", method, params, rid=31)
    assert status == 403, (status, body)
    assert headers["content-type"].startswith("application/json")
    assert body["id"] == 31 and "result" not in body, body
    assert body["error"]["code"] == FORBIDDEN
    message = body["error"]["message"]
    assert message.startswith(DENIED) and message.endswith(f"(rule: {DEFAULT_DENY})"), message
    assert served(stack) == before


@pytest.mark.parametrize(
    "uri",
    [
        "secret://" + "x" * 300,
        "secret://db/pass\nword",
        "secret://db/pass\x07word",
        "secret://db/pass\x1b[31mword",
    ],
    ids=["long", "newline", "bell", "escape"],
)
async def test_a_denial_never_echoes_a_long_uri_or_control_characters(
    stack: ContentStack, uri: str
) -> None:
    async with mcp_client(stack, token_for("seed")) as client:
        with pytest.raises(MCPError) as caught:
            await read(client, uri)
    message = caught.value.message
    assert_denied(caught.value, DEFAULT_DENY)
    assert "x" * 201 not in message
    assert not any(ch in message for ch in "\n\x07\x1b"), repr(message)


MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("resources/read", {"uri": 5}),
    ("resources/read", {}),
    ("resources/subscribe", {"uri": ["docs://guide"]}),
    ("prompts/get", {"name": 3}),
    ("prompts/get", {"name": "summarize", "arguments": ["cats"]}),
    ("prompts/get", {"name": "summarize", "arguments": {"topic": 5}}),
    ("completion/complete", {"ref": "summarize", "argument": {"name": "a", "value": "b"}}),
    (
        "completion/complete",
        {"ref": {"type": "ref/prompt"}, "argument": {"name": "a", "value": "b"}},
    ),
    (
        "completion/complete",
        {"ref": {"type": "ref/tool", "name": "echo"}, "argument": {"name": "a", "value": "b"}},
    ),
]


@pytest.mark.parametrize(
    ("method", "params"), MALFORMED, ids=[f"{m}-{json.dumps(p)}" for m, p in MALFORMED]
)
async def test_a_content_request_without_a_usable_subject_is_a_bad_request(
    stack: ContentStack, method: str, params: dict[str, Any]
) -> None:
    """The sidecar refuses it itself (400), even for a grant with `default: allow`."""
    before = served(stack)
    status, _, body = post(stack, "open", method, params, rid=41)
    assert status == 400, (status, body)
    assert body["error"]["message"].startswith(DENIED), body
    assert served(stack) == before


SMUGGLED = [
    b'{"jsonrpc":"2.0","id":5,"method":"resources/read",'
    b'"params":{"uri":"docs://guide","uri":"secret://db/password"}}',
    b'{"jsonrpc":"2.0","id":5,"method":"resources/read",'
    b'"params":{"uri":"docs://guide","\\u0075ri":"secret://db/password"}}',
    b'{"jsonrpc":"2.0","id":5,"method":"prompts/get",'
    b'"params":{"name":"summarize","name":"internal","arguments":{"topic":"x"}}}',
    b'{"jsonrpc":"2.0","id":5,"method":"tools/list","method":"resources/read",'
    b'"params":{"uri":"secret://db/password"}}',
    b'[{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"secret://db/password"}}]',
    b'[{"jsonrpc":"2.0","id":5,"method":"ping"},'
    b'{"jsonrpc":"2.0","id":6,"method":"resources/read","params":{"uri":"secret://db/password"}}]',
]


@pytest.mark.parametrize("body", SMUGGLED, ids=[f"smuggled-{i}" for i in range(len(SMUGGLED))])
async def test_duplicate_keys_or_a_batch_never_smuggle_content(
    stack: ContentStack, body: bytes
) -> None:
    """In a session of a grant that may read `docs://guide` and get `summarize` only."""
    before = served(stack)
    async with session(stack, "reader") as the:
        plain = (
            b'{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"docs://guide"}}'
        )
        control = await the.http.post(stack.mcp_url, content=plain, headers=the.request_headers())
        assert control.status_code == 200 and b"the guide" in control.content, control.text
        reply = await the.http.post(stack.mcp_url, content=body, headers=the.request_headers())
    assert reply.status_code >= 400, reply.text
    assert b"hunter2" not in reply.content and b"internal instructions" not in reply.content
    assert served(stack) == [*before, {"kind": "resource", "uri": "docs://guide"}]


# -- a policy that allows content: exactly what it names ------------------------------------------


async def test_the_reader_gets_exactly_what_its_policy_allows(stack: ContentStack) -> None:
    before = len(served(stack))
    async with mcp_client(stack, token_for("reader")) as client:
        assert await read(client, "docs://guide") == "the guide"
        assert await read(client, "file:///data/report.txt") == "quarterly report (static)"
        assert await read(client, "file:///data/public.txt") == "public notice"
        assert await read(client, "users://alice/profile") == "profile of alice"
        assert await read(client, "notes://public/readme.txt") == "read me"
        await subscribe(client, "docs://guide")
        assert (
            await prompt_text(client, "summarize", {"topic": "cats"}) == "Summarize cats (brief)."
        )
        # a completion is admitted by the prompt's entry; its conditions are not evaluated
        assert await complete_prompt(client, "summarize", "topic", "password") == [
            "password-one",
            "password-two",
        ]
        assert await complete_resource(client, "file:///data/{name}", "name", "se") == [
            "se-one",
            "se-two",
        ]
    assert served(stack)[before:] == [
        {"kind": "resource", "uri": "docs://guide"},
        {"kind": "resource", "uri": "file:///data/report.txt"},
        {
            "kind": "resource",
            "template": "file:///data/{name}",
            "args": {"name": "public.txt"},
            "served": "public.txt",
        },
        {
            "kind": "resource",
            "template": "users://{id}/profile",
            "args": {"id": "alice"},
            "served": None,
        },
        {
            "kind": "resource",
            "template": "notes://{+path}",
            "args": {"path": "public/readme.txt"},
            "served": "public/readme.txt",
        },
        {"kind": "subscribe", "uri": "docs://guide"},
        {"kind": "prompt", "name": "summarize", "args": {"topic": "cats", "style": "brief"}},
        {
            "kind": "completion",
            "ref": {"type": "ref/prompt", "name": "summarize"},
            "argument": {"name": "topic", "value": "password"},
        },
        {
            "kind": "completion",
            "ref": {"type": "ref/resource", "uri": "file:///data/{name}"},
            "argument": {"name": "name", "value": "se"},
        },
    ]


# (grant, method, target, prompt arguments or completion argument, the rule that denies)
DENIALS: list[tuple[str, str, str, dict[str, str] | None, str]] = [
    ("reader", "read", "secret://db/password", None, DEFAULT_DENY),
    ("reader", "read", "logs://monday", None, DEFAULT_DENY),
    ("reader", "read", "file:///data/secret.txt", None, f"{FILE_RULE}/deny_if/0"),
    ("reader", "read", "file:///data/secret-keys.txt", None, f"{FILE_RULE}/deny_if/0"),
    ("reader", "read", "users://mallory/profile", None, f"{USERS_RULE}/require/0"),
    ("reader", "read", "notes://private/plan.txt", None, f"{NOTES_RULE}/deny_if/0"),
    ("reader", "read", "notes://private", None, f"{NOTES_RULE}/deny_if/0"),
    ("reader", "subscribe", "secret://db/password", None, DEFAULT_DENY),
    ("reader", "subscribe", "file:///data/secret.txt", None, f"{FILE_RULE}/deny_if/0"),
    ("reader", "get", "internal", {}, DEFAULT_DENY),
    ("reader", "get", "announce", {"audience": "team"}, DEFAULT_DENY),
    ("reader", "get", "summarize", {"topic": "the Password"}, "/prompts/summarize/deny_if/0"),
    ("reader", "complete-prompt", "internal", None, DEFAULT_DENY),
    ("reader", "complete-resource", "logs://{day}", None, DEFAULT_DENY),
    ("wildcard", "read", "secret://db/password", None, "/resources/*/deny_if/0"),
    ("wildcard", "get", "summarize", {"topic": "Secret plans"}, "/prompts/*/deny_if/0"),
    ("public-notes", "read", "notes://private/plan.txt", None, DEFAULT_DENY),
    (
        "exact",
        "read",
        "file:///data/secret.txt",
        None,
        "/resources/file:~1~1~1data~1secret.txt/deny_if/0",
    ),
    ("methods", "get", "summarize", {"topic": "cats"}, "/methods/deny/0"),
    ("methods", "read", "file:///data/secret.txt", None, f"{FILE_RULE}/deny_if/0"),
    ("hider", "read", "secret://db/password", None, HIDDEN),
    ("hider", "read", "users://alice/profile", None, HIDDEN),
    ("hider", "subscribe", "users://alice/profile", None, HIDDEN),
    ("hider", "get", "internal", {}, HIDDEN),
    ("hider", "complete-prompt", "internal", None, HIDDEN),
    ("hider", "complete-resource", "users://{id}/profile", None, HIDDEN),
]


async def _attempt(client: Client, method: str, target: str, args: dict[str, str] | None) -> None:
    if method == "read":
        await read(client, target)
    elif method == "subscribe":
        await subscribe(client, target)
    elif method == "get":
        await prompt_text(client, target, args)
    elif method == "complete-prompt":
        await complete_prompt(client, target, "topic", "x")
    else:
        await complete_resource(client, target, "id", "x")


@pytest.mark.parametrize(
    ("grant", "method", "target", "args", "rule"),
    DENIALS,
    ids=[f"{g}-{m}-{t}" for g, m, t, _, _ in DENIALS],
)
async def test_entries_and_conditions_decide_as_written(
    stack: ContentStack,
    grant: str,
    method: str,
    target: str,
    args: dict[str, str] | None,
    rule: str,
) -> None:
    before = served(stack)
    async with mcp_client(stack, token_for(grant)) as client:
        with pytest.raises(MCPError) as caught:
            await _attempt(client, method, target, args)
    assert_denied(caught.value, rule)
    assert served(stack) == before


async def test_the_wildcard_entries_open_everything_but_what_they_deny(
    stack: ContentStack,
) -> None:
    before = len(served(stack))
    async with mcp_client(stack, token_for("wildcard")) as client:
        assert await read(client, "docs://guide") == "the guide"
        assert await read(client, "logs://monday") == "log of monday"
        assert await complete_resource(client, "logs://{day}", "day", "mo") == ["mo-one", "mo-two"]
        assert (
            await prompt_text(client, "summarize", {"topic": "cats"}) == "Summarize cats (brief)."
        )
    assert served(stack)[before:] == [
        {"kind": "resource", "uri": "docs://guide"},
        {"kind": "resource", "template": "logs://{day}", "args": {"day": "monday"}, "served": None},
        {
            "kind": "completion",
            "ref": {"type": "ref/resource", "uri": "logs://{day}"},
            "argument": {"name": "day", "value": "mo"},
        },
        {"kind": "prompt", "name": "summarize", "args": {"topic": "cats", "style": "brief"}},
    ]


async def test_a_methods_section_keeps_deciding_admission(stack: ContentStack) -> None:
    """`methods: {default: allow}` admits content the `default: deny` alone would not."""
    before = len(served(stack))
    async with mcp_client(stack, token_for("methods")) as client:
        assert await read(client, "secret://db/password") == "hunter2"
    assert served(stack)[before:] == [{"kind": "resource", "uri": "secret://db/password"}]


async def test_default_allow_changes_nothing(stack: ContentStack) -> None:
    before = len(served(stack))
    async with mcp_client(stack, token_for("open")) as client:
        assert await read(client, "secret://db/password") == "hunter2"
        assert await read(client, "file:///data/secret.txt") == "the launch codes"
        assert await read(client, "users://mallory/profile") == "profile of mallory"
        await subscribe(client, "secret://db/password")
        assert await prompt_text(client, "internal") == "internal instructions"
        assert await complete_prompt(client, "internal", "x", "y") == ["y-one", "y-two"]
        assert not (await client.call_tool("wipe", {})).is_error
    kinds = [entry["kind"] for entry in served(stack)[before:]]
    assert kinds == [
        "resource",
        "resource",
        "resource",
        "subscribe",
        "prompt",
        "completion",
        "tool",
    ]


async def test_hide_in_object_form_hides_tools_too(stack: ContentStack) -> None:
    before = len(served(stack))
    async with mcp_client(stack, token_for("hider")) as client:
        result = await client.call_tool("wipe", {})
        assert result.is_error and text_of(result).startswith(DENIED), text_of(result)
        assert text_of(result).endswith(f"(rule: {HIDDEN})"), text_of(result)
        assert await read(client, "docs://guide") == "the guide"
        assert await prompt_text(client, "summarize", {"topic": "x"}) == "Summarize x (brief)."
    assert [e["kind"] for e in served(stack)[before:]] == ["resource", "prompt"]


def decision_events(stack: ContentStack, method: str) -> list[dict[str, Any]]:
    events = []
    for line in stack.log_path("sidecar").read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("event") == "decision" and event.get("method") == method:
                events.append(event)
    return events


async def test_prompt_arguments_are_never_logged(stack: ContentStack) -> None:
    """A prompt's arguments are values, as a tool's are (a resource's URI is its subject, as
    a tool's name is, and denials name it)."""
    marker = "arg-value-7f3a91"
    before = len(decision_events(stack, "prompts/get"))
    async with mcp_client(stack, token_for("reader")) as client:
        assert marker in await prompt_text(client, "summarize", {"topic": marker})
        with pytest.raises(MCPError):
            await prompt_text(client, "summarize", {"topic": f"password {marker}"})
    deadline = time.monotonic() + 10
    while len(decision_events(stack, "prompts/get")) < before + 2:
        assert time.monotonic() < deadline, "the decisions were never logged"
        await asyncio.sleep(0.05)
    assert marker not in stack.log_path("sidecar").read_text(encoding="utf-8")


# -- hostile spellings of a URI: the record decides ------------------------------------------------


def _file_is_secret(entry: dict[str, Any]) -> bool:
    if entry.get("template") != "file:///data/{name}":
        return False
    return bool(re.match("^secret", entry["args"]["name"])) or Path(
        entry["served"]
    ).name.startswith("secret")


def _note_is_private(entry: dict[str, Any]) -> bool:
    if entry.get("template") != "notes://{+path}":
        return False
    private = re.compile("^private(/|$)")
    return bool(private.match(entry["args"]["path"]) or private.match(entry["served"]))


def _is_the_password(entry: dict[str, Any]) -> bool:
    return entry.get("uri") == "secret://db/password"


def _is_secret_txt(entry: dict[str, Any]) -> bool:
    return entry.get("template") == "file:///data/{name}" and entry["served"] == "secret.txt"


def _hider_forbids(entry: dict[str, Any]) -> bool:
    return _is_the_password(entry) or entry.get("template") == "users://{id}/profile"


def _reader_forbids(entry: dict[str, Any]) -> bool:
    return _file_is_secret(entry) or _note_is_private(entry) or _is_the_password(entry)


# (grant, URI, what the grant's policy forbids the server to serve)
HOSTILE: list[tuple[str, str, Callable[[dict[str, Any]], bool]]] = [
    *(
        ("reader", uri, _reader_forbids)
        for uri in [
            "file:///data/secret.txt",
            "file:///data/%73ecret.txt",
            "file:///data/%73%65%63%72%65%74.txt",
            "file:///data/sec%72et.txt",
            "file:///data/secret.txt/",
            "file:///data/secret.txt?x=1",
            "file:///data/secret.txt#top",
            "file:///data/./secret.txt",
            "file:///data/public/../secret.txt",
            "file:///data/.%2Fsecret.txt",
            "file:///data/.%2fsecret.txt",
            "file:///data/public.txt%2F..%2Fsecret.txt",
            "file:///data/%2e%2fsecret.txt",
            "file:///data/public%2F%2E%2E%2Fsecret.txt",
            "file:///data/%2e%2e%2fdata%2fsecret.txt",
            "file:///data/%2Fsecret.txt",
            "file:///data/secret.txt%00",
            "file:///data/secret.txt\n",
            "file:///data/%0asecret.txt",
            "FILE:///data/secret.txt",
            "File:///DATA/secret.txt",
            "file://localhost/data/secret.txt",
            "file:///data/\u0455ecret.txt",  # Cyrillic dze
            "file:///data/\uff53ecret.txt",  # fullwidth s
            "file:///data/" + "a/" * 3000 + "../" * 3000 + "secret.txt",
            "notes://private/plan.txt",
            "notes://%70rivate/plan.txt",
            "notes://private%2Fplan.txt",
            "notes://private%2fplan.txt",
            "notes://public/../private/plan.txt",
            "notes://public/%2e%2e/private/plan.txt",
            "notes://public/..%2Fprivate/plan.txt",
            "notes://public//../private/plan.txt",
            "notes://./private/plan.txt",
            "notes://.%2Fprivate/plan.txt",
            "notes://public/./../private/plan.txt",
            "notes://Private/plan.txt",
            "notes://private/plan.txt?raw",
            "NOTES://private/plan.txt",
            "secret://db/password",
            "secret://db/password/",
            "secret://db/%70assword",
            "SECRET://db/password",
            "secret://DB/password",
        ]
    ),
    *(
        ("public-notes", uri, _note_is_private)
        for uri in [
            "notes://public/%2E%2E%2Fprivate%2Fplan.txt",
            "notes://public/..%2Fprivate%2Fplan.txt",
            "notes://public/.%2E%2Fprivate%2Fplan.txt",
            "notes://public/%2e%2e/private/plan.txt",
            "notes://public/../private/plan.txt",
        ]
    ),
    *(
        ("wildcard", uri, _is_the_password)
        for uri in ["secret://db/%70assword", "SECRET://db/password", "secret://db/password#x"]
    ),
    *(
        ("hider", uri, _hider_forbids)
        for uri in [
            "users://alice/profile",
            "users:///profile",
            "users://%61lice/profile",
            "users://alice%2Fx/profile",
            "users://alice%2F/profile",
            "users://a,b/profile",
            "USERS://alice/profile",
            "secret://db/password",
            "secret://db/%70assword",
        ]
    ),
    *(
        ("exact", uri, _is_secret_txt)
        for uri in ["file:///data/%73ecret.txt", "file:///data/secre%74.txt"]
    ),
]


@pytest.mark.parametrize(
    ("grant", "uri", "forbidden"),
    HOSTILE,
    ids=[f"{grant}-{json.dumps(uri)[1:-1][:80]}" for grant, uri, _ in HOSTILE],
)
async def test_a_hostile_uri_never_gets_denied_content_served(
    stack: ContentStack, grant: str, uri: str, forbidden: Callable[[dict[str, Any]], bool]
) -> None:
    before = len(served(stack))
    async with mcp_client(stack, token_for(grant)) as client:
        # denied by the gateway, or not found by the server: the record decides
        with contextlib.suppress(MCPError):
            await read(client, uri)
    leaked = [entry for entry in served(stack)[before:] if forbidden(entry)]
    assert leaked == [], f"{uri!r} made the server serve {leaked}"


async def test_the_hostile_spellings_read_allowed_content_when_the_policy_allows_it(
    stack: ContentStack,
) -> None:
    """The controls of the hostile cases: the same spellings of allowed content are served, so
    the record above is empty because of the policy, not because the server cannot read them."""
    async with mcp_client(stack, token_for("open")) as client:
        assert await read(client, "file:///data/%73ecret.txt") == "the launch codes"
        assert await read(client, "file:///data/.%2Fsecret.txt") == "the launch codes"
        assert await read(client, "notes://public/../private/plan.txt") == "the private plan"
        assert (
            await read(client, "notes://public/%2E%2E%2Fprivate%2Fplan.txt") == "the private plan"
        )
    async with mcp_client(stack, token_for("public-notes")) as client:
        assert await read(client, "notes://public/readme.txt") == "read me"


# -- listings follow the policy --------------------------------------------------------------------

ALL_RESOURCES = set(upstream.STATIC_RESOURCES)
ALL_TEMPLATES = set(upstream.TEMPLATES)
ALL_PROMPTS = set(upstream.PROMPTS)
ALL_TOOLS = set(upstream.TOOLS)
# grant → (tools, resources, templates, prompts) its listings show
LISTED: dict[str, tuple[set[str], set[str], set[str], set[str]]] = {
    "seed": (ALL_TOOLS, set(), set(), set()),
    "reader": (
        ALL_TOOLS,
        {"docs://guide", "file:///data/report.txt"},
        {"file:///data/{name}", "users://{id}/profile", "notes://{+path}"},
        {"summarize"},
    ),
    "open": (ALL_TOOLS, ALL_RESOURCES, ALL_TEMPLATES, ALL_PROMPTS),
    "hider": (
        {"echo"},
        {"docs://guide", "file:///data/report.txt"},
        {"file:///data/{name}", "notes://{+path}", "logs://{day}"},
        {"summarize", "announce"},
    ),
    "wildcard": (ALL_TOOLS, ALL_RESOURCES, ALL_TEMPLATES, ALL_PROMPTS),
    "methods": (ALL_TOOLS, ALL_RESOURCES, ALL_TEMPLATES, set()),
    "approvals": (ALL_TOOLS, {"secret://db/password"}, set(), {"announce"}),
}


@pytest.mark.processes
@pytest.mark.parametrize("era", ["legacy", "2026-07-28"])
@pytest.mark.parametrize("mode", ["sse", "json"])
@pytest.mark.parametrize("grant", sorted(LISTED))
async def test_listings_show_what_the_grant_may_use(
    request: pytest.FixtureRequest, transport: str, mode: str, era: str, grant: str
) -> None:
    the_stack: ContentStack = request.getfixturevalue("stack" if mode == "sse" else "json_upstream")
    async with mcp_client(the_stack, token_for(grant), mode=era) as client:
        tools = await client.list_tools(cache_mode="bypass")
        resources = await client.list_resources(cache_mode="bypass")
        templates = await client.list_resource_templates(cache_mode="bypass")
        prompts = await client.list_prompts(cache_mode="bypass")
    shown = (
        {tool.name for tool in tools.tools},
        {resource.uri for resource in resources.resources},
        {template.uri_template for template in templates.resource_templates},
        {prompt.name for prompt in prompts.prompts},
    )
    assert shown == LISTED[grant]


@pytest.mark.parametrize("era", ["legacy", "2026-07-28"])
async def test_a_resource_listing_over_the_bound_is_an_error_never_unfiltered(
    big_stack: ContentStack, era: str
) -> None:
    """A grant whose listings are filtered never gets one the sidecar could not read whole
    (it would list `secret://db/password`); a grant with nothing to filter gets it whole."""
    async with session(big_stack, "open", era=era) as the:
        [full] = messages(await the.post("resources/list", 2, {}))
    uris = {resource["uri"] for resource in full["result"]["resources"]}
    assert "secret://db/password" in uris and len(uris) == 33
    assert len(json.dumps(full)) > 1 << 20
    async with mcp_client(big_stack, token_for("reader"), mode=era) as client:
        with pytest.raises(MCPError) as failed:
            await client.list_resources(cache_mode="bypass")
    assert failed.value.code == -32603, failed.value.message
    assert failed.value.message.startswith(DENIED), failed.value.message
    async with session(big_stack, "reader", era=era) as the:
        reply = await the.post("resources/list", 3, {})
        assert b"secret://db/password" not in reply.content and len(reply.content) < 1000
        [error] = messages(reply)
        assert error["id"] == 3 and error["error"]["code"] == -32603


# -- a limit on resources/read holds under concurrency ---------------------------------------------

LIMIT_RULE = f"{USERS_RULE}/limits/profile_reads"


async def _read_concurrently(the_stack: ContentStack, count: int) -> list[str | BaseException]:
    async with mcp_client(the_stack, token_for("limited")) as client:
        return await asyncio.gather(
            *(read(client, f"users://u{i}/profile") for i in range(count)), return_exceptions=True
        )


@pytest.mark.processes
@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_read_limit_holds_under_concurrency(
    request: pytest.FixtureRequest, transport: str, store: str
) -> None:
    the_stack: ContentStack = request.getfixturevalue(
        "stack" if store == "memory" else "redis_stack"
    )
    wait_for_fresh_window(25)
    before = len(served(the_stack))
    answers = await _read_concurrently(the_stack, 20)
    profiles = [
        e for e in served(the_stack)[before:] if e.get("template") == "users://{id}/profile"
    ]
    assert len(profiles) == 5, profiles
    ok = [a for a in answers if isinstance(a, str)]
    denied = [a for a in answers if isinstance(a, MCPError)]
    assert len(ok) == 5 and len(denied) == 15, answers
    for err in denied:
        assert err.message.startswith(DENIED), err.message
        assert err.message.endswith(f"(rule: {LIMIT_RULE})"), err.message
    # once spent, a read is a 429 JSON-RPC error
    status, headers, body = post(
        the_stack, "limited", "resources/read", {"uri": "users://x/profile"}
    )
    assert status == 429, (status, body)
    assert "retry-after" in headers
    assert body["error"]["message"].startswith(DENIED)
    assert len(served(the_stack)) == before + 5


# -- an approval holds a prompt and a resource -----------------------------------------------------


def approve(stack: Stack, approval: str) -> None:
    status, body = stack.admin_request(
        "POST", f"/approvals/{approval}/approve", token=APPROVER_TOKEN, body={"reason": "fine"}
    )
    assert status == 200, (status, body)


def shown_approval(stack: Stack, approval: str) -> dict[str, Any]:
    status, body = stack.admin_request("GET", f"/approvals/{approval}", token=APPROVER_TOKEN)
    assert status == 200 and isinstance(body, dict), (status, body)
    return body


def held_id(err: MCPError, rule: str) -> str:
    assert_denied(err, rule, prefix=HELD)
    found = APPROVAL_ID.search(err.message)
    assert found is not None, err.message
    return found.group(0)


async def test_an_approval_holds_a_prompt_until_a_person_approves(stack: ContentStack) -> None:
    rule = "/prompts/announce/approve_if/0"
    args = {"audience": "everyone", "note": "launch"}
    before = len(served(stack))
    async with mcp_client(stack, token_for("approvals")) as client:
        with pytest.raises(MCPError) as caught:
            await prompt_text(client, "announce", args)
    first = held_id(caught.value, rule)
    assert len(served(stack)) == before  # never rendered while held
    shown = shown_approval(stack, first)
    assert shown["status"] == "pending" and shown["rule"] == rule
    assert shown["tool"] == "prompts/get announce"
    assert shown["grant_id"] == "approvals"

    approve(stack, first)
    async with mcp_client(stack, token_for("approvals")) as client:
        with pytest.raises(MCPError) as caught:  # the approval is bound to the exact request
            await prompt_text(client, "announce", {**args, "note": "launch!"})
        assert held_id(caught.value, rule) != first
        assert await prompt_text(client, "announce", args) == "Announce to everyone. launch"
        with pytest.raises(MCPError) as caught:
            await prompt_text(client, "announce", args)  # used once: held again
        second = held_id(caught.value, rule)
        # an audience the rule does not name is not held
        assert await prompt_text(client, "announce", {"audience": "team"}) == "Announce to team."
    assert second != first
    assert shown_approval(stack, first)["status"] == "used"
    assert served(stack)[before:] == [
        {"kind": "prompt", "name": "announce", "args": args},
        {"kind": "prompt", "name": "announce", "args": {"audience": "team", "note": ""}},
    ]


async def test_a_held_prompt_is_a_403_with_the_approval_header(stack: ContentStack) -> None:
    before = served(stack)
    params = {"name": "announce", "arguments": {"audience": "everyone", "note": "raw"}}
    status, headers, body = post(stack, "approvals", "prompts/get", params, rid=12)
    assert status == 403, (status, body)
    assert body["id"] == 12 and body["error"]["code"] == FORBIDDEN
    message = body["error"]["message"]
    assert message.startswith(HELD), message
    assert APPROVAL_ID.fullmatch(headers[APPROVAL_HEADER]), headers
    assert headers[APPROVAL_HEADER] in message
    assert served(stack) == before


async def test_an_approval_holds_a_resource_until_a_person_approves(stack: ContentStack) -> None:
    rule = f"{SECRET_RULE}/require_approval"
    before = len(served(stack))
    async with mcp_client(stack, token_for("approvals")) as client:
        with pytest.raises(MCPError) as caught:
            await read(client, "secret://db/password")
        first = held_id(caught.value, rule)
        assert len(served(stack)) == before
        assert shown_approval(stack, first)["tool"] == "resources/read secret://db/password"
        approve(stack, first)
        assert await read(client, "secret://db/password") == "hunter2"
        with pytest.raises(MCPError) as caught:
            await read(client, "secret://db/password")
        assert held_id(caught.value, rule) != first
    assert served(stack)[before:] == [{"kind": "resource", "uri": "secret://db/password"}]
