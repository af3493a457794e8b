"""Type coercion and regex cost, end to end: real Envoy, sidecar, MCP servers and SDK client.

An MCP server converts arguments before its tool runs (the Python SDK, in pydantic's lax
mode: `"4096"` → 4096, `"yes"`/`1`/`1.0` → True, `'["a"]'` → ['a']), so a policy that
compared raw JSON types judged one value and the tool ran with another. Ground truth is
what ran: the ImageGen upstream's execution record and the offline Gemini endpoint's
request list, and a test-only tool (tests/e2e/typed_upstream.py) that records the typed
values it received.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from authz.config.grants import hash_token
from authz.devstack.stack import LOOPBACK, Stack
from tests.e2e.conftest import executed, mcp_client, wait_until_envoy_idle
from tests.e2e.typed_upstream import TOOL as PROBE

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
GEMINI = "image.generate.gemini"
GOOGLE = "image.generate.google"
DENIED = "[POLICY DENIED] "
CATASTROPHIC = "^(a+)+$"
"""Exponential for a backtracking engine on a run of `a` that ends in another character."""


def token_for(grant: str) -> str:
    return f"coerce-token-{grant}"


def write_config(root: Path, policies: dict[str, Any], grants: dict[str, str]) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in policies.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc, indent=2))
    entries = [
        {"id": gid, "label": gid, "token_sha256": hash_token(token_for(gid)), "policy": policy}
        for gid, policy in grants.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": entries}))
    return root


def deny(path: str, op: str, value: Any, on_deny: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"conditions": [{"path": path, "op": op, "value": value}]}
    if on_deny is not None:
        rule["on_deny"] = on_deny
    return rule


def text_of(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if isinstance(part, TextContent))


# -- the repo's ImageGen upstream ---------------------------------------------------------------

IMAGEGEN_POLICIES: dict[str, Any] = {
    # as deploy/config/policies/imagegen-limited.json, plus a width cap on Imagen
    "limited": {
        "version": "1",
        "default": "deny",
        "tools": {
            GEMINI: {
                "deny_if": [
                    deny(
                        "args.returnBase64",
                        "eq",
                        True,
                        "this grant may not ask for base64 image data; omit returnBase64",
                    )
                ]
            },
            GOOGLE: {"deny_if": [deny("args.width", "gt", 1024)]},
        },
    },
    "regex": {
        "version": "1",
        "default": "deny",
        "tools": {GEMINI: {"deny_if": [deny("args.prompt", "regex", CATASTROPHIC)]}},
    },
    "open": {"version": "1", "default": "allow"},
}
IMAGEGEN_GRANTS = {"limited": "limited", "regex": "regex", "bystander": "open"}


@pytest.fixture(scope="module")
def imagegen(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("coercion")
    record = base / "executed.jsonl"
    record.touch()
    the_stack = Stack(
        config_dir=write_config(base / "config", IMAGEGEN_POLICIES, IMAGEGEN_GRANTS),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        transport=transport,
    )
    with the_stack:
        yield the_stack


def provider_requests(stack: Stack) -> list[dict[str, Any]]:
    """What the offline Gemini endpoint (the paid provider's HTTP boundary) was asked."""
    url = f"http://{LOOPBACK}:{stack.ports.gemini}/offline/requests"
    with urllib.request.urlopen(url, timeout=5) as response:
        requests: list[dict[str, Any]] = json.load(response)["requests"]
    return requests


async def call_as(stack: Stack, grant: str, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    async with mcp_client(stack, token_for(grant)) as client:
        return await client.call_tool(tool, arguments)


BASE64_RULE = f"(rule: /tools/{GEMINI}/deny_if/0)"
WIDTH_RULE = f"(rule: /tools/{GOOGLE}/deny_if/0)"


@pytest.mark.parametrize(
    ("tool", "arguments", "rule", "names"),
    [
        (
            GEMINI,
            {"returnBase64": 1},
            BASE64_RULE,
            "args.returnBase64 must be a boolean, not a number",
        ),
        *[
            (GEMINI, {"returnBase64": value}, BASE64_RULE, "must be a boolean, not a string")
            for value in ("true", "1", "yes", "on", "True", "t")
        ],
        (GEMINI, {"returnBase64": 1.0}, BASE64_RULE, "must be a boolean, not a number"),
        (GOOGLE, {"width": "4096"}, WIDTH_RULE, "args.width must be a number, not a string"),
        (GEMINI, {"returnBase64": True}, BASE64_RULE, "may not ask for base64 image data"),
        (GOOGLE, {"width": 4096}, WIDTH_RULE, "is denied when args.width gt 1024"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
async def test_coerced_values_are_denied_and_never_run(
    imagegen: Stack, tool: str, arguments: dict[str, Any], rule: str, names: str
) -> None:
    ran, asked = len(executed(imagegen)), len(provider_requests(imagegen))
    result = await call_as(imagegen, "limited", tool, {"prompt": "a fox", **arguments})
    text = text_of(result)
    assert result.is_error, text
    assert text.startswith(DENIED) and text.endswith(rule), text
    assert names in text, text
    for value in arguments.values():
        if isinstance(value, str):
            assert repr(value) not in text and f'"{value}"' not in text  # never echoed
    wait_until_envoy_idle(imagegen)  # a call that was (wrongly) forwarded has landed
    assert len(executed(imagegen)) == ran, "the upstream ran a denied call"
    assert len(provider_requests(imagegen)) == asked, "the provider was called"


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [(GEMINI, {"returnBase64": False}), (GEMINI, {}), (GOOGLE, {"width": 512}), (GOOGLE, {})],
)
async def test_genuine_values_still_run(
    imagegen: Stack, tool: str, arguments: dict[str, Any]
) -> None:
    ran, asked = len(executed(imagegen)), len(provider_requests(imagegen))
    result = await call_as(imagegen, "limited", tool, {"prompt": "a calm fox", **arguments})
    assert not result.is_error, text_of(result)
    assert [e["tool"] for e in executed(imagegen)[ran:]] == [tool]
    assert len(provider_requests(imagegen)) == asked + 1


async def test_catastrophic_pattern_does_not_stall_other_grants(imagegen: Stack) -> None:
    """`^(a+)+$` against 32 `a` and a `!` takes a backtracking engine minutes, and every
    decision of the sidecar waits for it. With RE2 the bad prompt is decided at once and
    another grant's tools/list, sent while it is evaluated, is answered promptly."""
    prompt = "a" * 32 + "!"
    ran = len(executed(imagegen))

    async def bad_call() -> tuple[float, CallToolResult]:
        started = time.monotonic()
        result = await call_as(imagegen, "regex", GEMINI, {"prompt": prompt})
        return time.monotonic() - started, result

    async def bystander() -> float:
        async with mcp_client(imagegen, token_for("bystander")) as client:
            await asyncio.sleep(0.2)  # the bad prompts are in the sidecar now
            started = time.monotonic()
            tools = await client.list_tools()
            assert GEMINI in {tool.name for tool in tools.tools}
            return time.monotonic() - started

    bad = [asyncio.create_task(bad_call()) for _ in range(3)]
    try:
        listed = await bystander()
    finally:
        results = await asyncio.gather(*bad, return_exceptions=True)
    # generous bounds: Envoy answers 503 after its 1 s ext_authz timeout, so a stalled
    # sidecar fails the calls themselves; the bounds only catch a pathological slowdown
    assert listed < 2.0, f"tools/list took {listed:.2f}s"
    for outcome in results:
        assert not isinstance(outcome, BaseException), repr(outcome)
        took, result = outcome
        assert not result.is_error, text_of(result)  # not matched: allowed, and it ran
        assert took < 5.0, f"the bad prompt took {took:.2f}s"
    assert [e["tool"] for e in executed(imagegen)[ran:]] == [GEMINI] * 3


# -- check-policy refuses what RE2 cannot run ---------------------------------------------------


def check_policy(path: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).parent / "mcp-authz"
    argv = [str(cli)] if cli.exists() else [sys.executable, "-m", "authz.cli"]
    return subprocess.run(
        [*argv, "check-policy", str(path)], capture_output=True, text=True, timeout=60
    )


def regex_policy(pattern: str) -> dict[str, Any]:
    return {
        "version": "1",
        "tools": {GEMINI: {"deny_if": [deny("args.prompt", "regex", pattern)]}},
    }


@pytest.mark.processes
def test_check_policy_accepts_catastrophic_patterns_under_re2(tmp_path: Path) -> None:
    path = tmp_path / "catastrophic.json"
    path.write_text(json.dumps(regex_policy(CATASTROPHIC)))
    done = check_policy(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{path}: ok"


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        (r"(\w+) \1", "RE2 has no backreferences"),
        (r"(?P<w>\w+) (?P=w)", "RE2 has no backreferences"),
        ("secret(?=s)", "RE2 has no lookahead or lookbehind"),
        ("(?<!top )secret", "RE2 has no lookahead or lookbehind"),
        (r"secret\Z", r"use \z"),
        ("x{,3}", "means a repetition in Python but literal text in RE2"),
    ],
)
@pytest.mark.processes
def test_check_policy_refuses_patterns_re2_cannot_run(
    tmp_path: Path, pattern: str, hint: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(regex_policy(pattern)))
    done = check_policy(path)
    assert done.returncode == 1, done
    where = f"{path}: $.tools['{GEMINI}'].deny_if[0].conditions[0].value: invalid regex "
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(where), line
    assert hint in line, line


# -- a test-only MCPServer with int, bool, list and object parameters ---------------------------

RULES = [
    deny("args.amount", "gt", 100),
    deny("args.flag", "eq", True),
    deny("args.tags", "contains", "admin"),
    deny("args.opts.mode", "eq", "danger"),
]
TYPED_POLICY = {"version": "1", "default": "deny", "tools": {PROBE: {"deny_if": RULES}}}
TYPED_POLICIES = {"typed": TYPED_POLICY, "typed-lax": {**TYPED_POLICY, "strict_types": False}}
TYPED_GRANTS = {"strict": "typed", "lax": "typed-lax"}


@dataclass
class TypedStack(Stack):
    """The real Envoy and sidecar in front of tests/e2e/typed_upstream.py."""

    record: Path = field(default_factory=Path)

    def start_upstream(self) -> None:
        argv = [sys.executable, "-m", "tests.e2e.typed_upstream"]
        argv += ["--port", str(self.ports.upstream), "--record", str(self.record)]
        self._spawn("upstream", argv, {**self.upstream_env(), "PYTHONPATH": str(ROOT)})
        self._wait_tcp("upstream", self.ports.upstream)


@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[TypedStack]:
    base = tmp_path_factory.mktemp("typed")
    record = base / "received.jsonl"
    record.touch()
    the_stack = TypedStack(
        config_dir=write_config(base / "config", TYPED_POLICIES, TYPED_GRANTS),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        offline_gemini=False,
        record=record,
        transport=transport,
    )
    with the_stack:
        yield the_stack


def received(stack: TypedStack) -> list[dict[str, Any]]:
    """Every run of the probe tool: the values it received and their Python types."""
    lines = stack.record.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# (arguments the agent sends, the rule that must deny them, what the tool would receive,
#  whether the call gets through without strict types)
COERCED: list[tuple[dict[str, Any], int, str, Any, str, bool]] = [
    ({"amount": "500"}, 0, "amount", 500, "int", True),
    ({"flag": "yes"}, 1, "flag", True, "bool", True),
    ({"flag": "on"}, 1, "flag", True, "bool", True),
    ({"flag": 1}, 1, "flag", True, "bool", True),
    # the text holds "admin" as a substring: contains denies it with or without strict types
    ({"tags": '["admin"]'}, 2, "tags", ["admin"], "list", False),
    ({"tags": '["adm\\u0069n"]'}, 2, "tags", ["admin"], "list", True),  # escaped in the text
    ({"opts": '{"mode":"danger"}'}, 3, "opts", {"mode": "danger"}, "dict", True),
]


@pytest.mark.parametrize(
    ("arguments", "rule"), [c[:2] for c in COERCED], ids=[json.dumps(c[0]) for c in COERCED]
)
async def test_strict_types_deny_what_the_tool_would_receive_as_forbidden(
    typed: TypedStack, arguments: dict[str, Any], rule: int
) -> None:
    before = len(received(typed))
    result = await call_as(typed, "strict", PROBE, arguments)
    text = text_of(result)
    assert result.is_error and text.startswith(DENIED), text
    assert text.endswith(f"(rule: /tools/{PROBE}/deny_if/{rule})"), text
    wait_until_envoy_idle(typed)
    assert len(received(typed)) == before, "the tool ran"


@pytest.mark.parametrize(
    ("arguments", "rule", "name", "value", "type_name", "gets_through"),
    COERCED,
    ids=[json.dumps(c[0]) for c in COERCED],
)
async def test_without_strict_types_the_tool_receives_the_converted_value(
    typed: TypedStack,
    arguments: dict[str, Any],
    rule: int,
    name: str,
    value: Any,
    type_name: str,
    gets_through: bool,
) -> None:
    """The danger `strict_types: false` brings back: the gateway compares the raw JSON and
    allows, the server converts, and the tool runs with the forbidden value."""
    before = len(received(typed))
    result = await call_as(typed, "lax", PROBE, arguments)
    if not gets_through:
        assert text_of(result).endswith(f"(rule: /tools/{PROBE}/deny_if/{rule})")
        return
    assert not result.is_error, text_of(result)
    (run,) = received(typed)[before:]
    assert run["received"][name] == value
    assert run["types"][name] == type_name


@pytest.mark.parametrize("grant", ["strict", "lax"])
async def test_genuine_values_run_and_genuine_violations_are_denied(
    typed: TypedStack, grant: str
) -> None:
    fine = {"amount": 50, "flag": False, "tags": ["user"], "opts": {"mode": "safe"}}
    before = len(received(typed))
    result = await call_as(typed, grant, PROBE, fine)
    assert not result.is_error, text_of(result)
    (run,) = received(typed)[before:]
    assert run["received"] == fine
    violations: list[tuple[dict[str, Any], int]] = [
        ({"amount": 500}, 0),
        ({"flag": True}, 1),
        ({"tags": ["user", "admin"]}, 2),
        ({"opts": {"mode": "danger"}}, 3),
    ]
    for arguments, rule in violations:
        result = await call_as(typed, grant, PROBE, arguments)
        assert text_of(result).endswith(f"(rule: /tools/{PROBE}/deny_if/{rule})")
    wait_until_envoy_idle(typed)
    assert len(received(typed)) == before + 1
