"""Properties of the strict parser and the engine under hostile input (hypothesis).

What must hold for any input an agent can send (docs/security.md, threat model):

1. Parsing raises only `McpParseError`, and `decide` never raises, for arbitrary bytes,
   arbitrary JSON, near-valid MCP messages and any policy the schema accepts. Whatever the
   parser accepts, the two parsers the upstream uses (`json.loads`, pydantic's
   `from_json`) read the same way.
2. Decisions are deterministic: the same (policy, grant, bytes) gives the same `Decision`,
   and `Authorizer.check` on a fresh memory store gives the same (outcome, rule, kind).
3. Duplicate keys: a message with a duplicate key anywhere is rejected (-32700) and the
   pipeline denies it; whenever a first-wins and a last-wins reading differ, we reject.
4. A re-serialisation that only changes string escaping parses to the same request and
   gets the same decision.
5. JSON whitespace between tokens changes nothing.

Also: `load_policy` raises only `PolicyError` (policies are operator input), and deny
messages never carry argument values.

Profiles: `HYPOTHESIS_PROFILE=ci` (the default when `CI` is set) is derandomized and keeps
no example database, so CI runs the same examples every time; `dev` (the default
elsewhere) explores new examples on each run and remembers failures in `.hypothesis/`;
`thorough` is `dev` with 20 times the examples (minutes, for a local hunt).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic_core
import pytest
import structlog
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from authz.config.grants import GrantTable, hash_token
from authz.config.source import ConfigSet, ConfigSource
from authz.counters.memory import MemoryCounterStore
from authz.engine import decide, settle
from authz.mcp import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    McpParseError,
    check_mirror_headers,
    parse_json,
    parse_message,
)
from authz.model import Decision, DenyKind, Grant, McpRequest, Outcome
from authz.pipeline.gate import HEADER_MISMATCH, Authorizer, Verdict
from authz.pipeline.request import HttpRequest
from authz.policy import Policy, PolicyError, conditions, load_policy

# -- settings --------------------------------------------------------------------------

PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
_PROFILE_SETTINGS: dict[str, dict[str, Any]] = {
    "ci": {"derandomize": True, "database": None},
    "dev": {},
    "thorough": {},
}
_SCALE = {"thorough": 20}


def fast(max_examples: int) -> settings:
    """Settings for one property: bounded examples, no deadline, the selected profile."""
    return settings(
        max_examples=max_examples * _SCALE.get(PROFILE, 1),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=True,
        **_PROFILE_SETTINGS.get(PROFILE, {}),
    )


# -- a hand serialiser (json cannot emit duplicates, escapes or odd whitespace) --------


class Obj(list[tuple[str, Any]]):
    """A JSON object as ordered (key, value) pairs; may hold a key more than once."""


class Raw(str):
    """A number literal emitted verbatim (e.g. `1e999`, `-0`, `1E+2`)."""


def to_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return Obj((k, to_tree(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return [to_tree(v) for v in value]
    return value


_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "/": "\\/",
}
JSON_WHITESPACE = " \t\n\r"


@dataclass
class Style:
    """How to render: `escape` is the chance to escape a char that need not be, `ws` the
    chance of whitespace at each place between tokens."""

    rnd: random.Random
    escape: float = 0.0
    ws: float = 0.0

    def space(self) -> str:
        if self.ws and self.rnd.random() < self.ws:
            return "".join(self.rnd.choice(JSON_WHITESPACE) for _ in range(self.rnd.randint(1, 3)))
        return ""

    def hex4(self, code: int) -> str:
        digits = f"{code:04x}"
        return "\\u" + (digits.upper() if self.rnd.random() < 0.5 else digits)

    def escaped(self, ch: str) -> str:
        code = ord(ch)
        if code > 0xFFFF:
            code -= 0x10000
            return self.hex4(0xD800 + (code >> 10)) + self.hex4(0xDC00 + (code & 0x3FF))
        options = [self.hex4(code)]
        if ch in _SHORT_ESCAPES:
            options.append(_SHORT_ESCAPES[ch])
        return self.rnd.choice(options)

    def string(self, text: str) -> str:
        out = ['"']
        for ch in text:
            must = ch in '"\\' or ord(ch) < 0x20
            if must or (self.escape and self.rnd.random() < self.escape):
                out.append(self.escaped(ch))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)

    def value(self, node: Any) -> str:
        s = self.space
        if isinstance(node, Obj):
            members = [f"{s()}{self.string(k)}{s()}:{s()}{self.value(v)}{s()}" for k, v in node]
            return "{" + (",".join(members) if members else s()) + "}"
        if isinstance(node, list):
            items = [f"{s()}{self.value(v)}{s()}" for v in node]
            return "[" + (",".join(items) if items else s()) + "]"
        if isinstance(node, Raw):
            return str(node)
        if isinstance(node, str):
            return self.string(node)
        return json.dumps(node)

    def dumps(self, node: Any) -> bytes:
        return (self.space() + self.value(node) + self.space()).encode("utf-8")


def plain(node: Any) -> bytes:
    return Style(random.Random(0)).dumps(node)


def canon(value: Any) -> str:
    """A strict comparison key: 1, 1.0 and true differ; object member order does not."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def objects(node: Any, where: str = "$") -> Iterator[tuple[str, Obj]]:
    """Every object in a tree, with where it is (for `note`)."""
    if isinstance(node, Obj):
        yield where, node
        for key, child in node:
            yield from objects(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from objects(child, f"{where}[{i}]")


def has_duplicate_key(node: Any) -> bool:
    return any(len({k for k, _ in obj}) != len(obj) for _, obj in objects(node))


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


# -- JSON and MCP strategies -----------------------------------------------------------

KEY_POOL = ["a", "b", "mode", "n", "x y", "é", "id", "name", "arguments", "method", "/", ""]
keys = st.sampled_from(KEY_POOL) | st.text(max_size=6)
# Bounded so that every literal stays under the parser's 64-character cap.
json_ints = st.integers(-(10**18), 10**18)
json_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | json_ints | json_floats | st.text(max_size=12)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4)


def pair_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Lists, and objects as `Obj` pairs (so that a tree may hold duplicate keys)."""
    return st.lists(inner, max_size=4) | st.lists(st.tuples(keys, inner), max_size=4).map(Obj)


def dup_prone_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Objects over four keys only, so that duplicate keys are common."""
    pairs = st.tuples(st.sampled_from(["a", "b", "é", "/"]), inner)
    return st.lists(inner, max_size=3) | st.lists(pairs, max_size=4).map(Obj)


json_values = st.recursive(json_scalars, json_containers, max_leaves=12)
NUMBER_LITERAL = r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,4})?"
number_literals = st.from_regex(NUMBER_LITERAL, fullmatch=True)
# Values whose numbers may be any literal (overflowing, underflowing, -0, exponents…).
raw_values = st.recursive(json_scalars | number_literals.map(Raw), pair_containers, max_leaves=12)
arguments = st.dictionaries(keys, json_values, max_size=5)

# Tool names the parser accepts (the MCP charset) and names it must refuse (-32602).
TOOL_POOL = ["t", "u", "image.generate.gemini", "a-b_c.D9"]
tool_names = st.sampled_from(TOOL_POOL) | st.from_regex(r"[A-Za-z0-9_.\-]{1,12}", fullmatch=True)
odd_tool_names = st.sampled_from(["a/b", "x~y", "*", "ünï", "t ", "\uff54", "t\u200b"]) | st.text(
    min_size=1, max_size=8
)
request_ids = json_ints | st.text(max_size=8)
# Known MCP methods, and well-formed unknown ones (decided by the policy's `methods`).
OTHER_METHODS = ["initialize", "tools/list", "ping", "resources/read", "prompts/get", "x/y"]
NOTIFICATIONS = ["notifications/initialized", "notifications/cancelled"]


@st.composite
def tool_calls(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {"name": draw(tool_names), "arguments": draw(arguments)}
    if draw(st.booleans()):
        params["_meta"] = draw(st.dictionaries(keys, json_values, max_size=3))
    return {"jsonrpc": "2.0", "id": draw(request_ids), "method": "tools/call", "params": params}


@st.composite
def other_messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["request", "notification", "result", "error"]))
    if kind in ("result", "error"):
        payload = draw(json_values) if kind == "result" else {"code": -1, "message": "x"}
        return {"jsonrpc": "2.0", "id": draw(request_ids), kind: payload}
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": draw(st.sampled_from(OTHER_METHODS))}
    if kind == "request":
        message["id"] = draw(request_ids)
    else:
        message["method"] = draw(st.sampled_from(NOTIFICATIONS))
    # resources/read and prompts/get need their subject (a string uri, name), and a
    # prompt's arguments are strings
    if draw(st.booleans()) or message["method"] in ("resources/read", "prompts/get"):
        extra = draw(st.dictionaries(keys, json_values, max_size=2))
        if "arguments" in extra:
            extra["arguments"] = draw(st.dictionaries(keys, st.text(max_size=4), max_size=2))
        message["params"] = {
            **extra,
            "name": draw(tool_names),
            "uri": draw(st.text(max_size=8)),
        }
    return message


# Valid messages: tool calls most of the time, every other shape too.
mcp_messages = st.one_of(tool_calls(), tool_calls(), other_messages())

_SPECIAL = [None, "", 0, 1.5, True, [], {}, "2.0 ", "tools/call ", "Tools/call", "x/y", "1.0"]
_TOP_MEMBERS = ["jsonrpc", "id", "method", "params", "result", "error"]
_PARAM_MEMBERS = ["name", "arguments", "_meta", "uri"]


@st.composite
def near_valid_messages(draw: st.DrawFn) -> Any:
    """A valid message with 0-3 mutations: dropped, retyped or extra members, batches…"""
    message: Any = draw(mcp_messages)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["drop", "set", "extra", "param", "batch", "unwrap"]))
        params = message.get("params") if isinstance(message, dict) else None
        if op == "batch":
            message = [message]
        elif op == "unwrap":
            message = message[0] if isinstance(message, list) and message else message
        elif not isinstance(message, dict):
            continue
        elif op == "drop" and message:
            del message[draw(st.sampled_from(sorted(message)))]
        elif op == "set":
            value = draw(st.sampled_from(_SPECIAL) | json_values)
            message[draw(st.sampled_from(_TOP_MEMBERS))] = value
        elif op == "extra":
            message[draw(keys)] = draw(json_values)
        elif op == "param" and isinstance(params, dict):
            member = draw(st.sampled_from(_PARAM_MEMBERS) | keys)
            if draw(st.booleans()) and member in params:
                del params[member]
            else:
                params[member] = draw(st.sampled_from(_SPECIAL) | odd_tool_names | json_values)
    return message


# -- policy strategies (over the v1 schema) ---------------------------------------------

path_segments = st.sampled_from(["a", "b", "mode", "n", "x y", "é", "id"]) | st.text(
    alphabet=st.characters(exclude_characters=".", exclude_categories=["Cs"]),
    min_size=1,
    max_size=5,
)
arg_paths = st.lists(path_segments, min_size=1, max_size=3).map(lambda p: "args." + ".".join(p))
numbers = st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False)
# RE2 patterns: catastrophic ones for Python's re (^(a+)+$) run in linear time here.
regexes = st.sampled_from(
    ["^a", "b$", "[0-9]+", "x|y", ".*", "", "é", "(?i)MODE", r"\d{2,}", "^(a+)+$", r"\pL+\z"]
) | (st.text(max_size=5).map(re.escape))


def condition_values(op: str) -> st.SearchStrategy[Any]:
    if op in conditions.LIST_OPS:
        return st.lists(json_values, max_size=4)
    if op in conditions.NUMERIC_OPS:
        return numbers
    if op == "regex":
        return regexes
    if op == "exists":
        return st.booleans()
    return json_values


arg_conditions = st.sampled_from(conditions.OPERATORS).flatmap(
    lambda op: st.fixed_dictionaries(
        {"path": arg_paths, "op": st.just(op), "value": condition_values(op)}
    )
)
messages_text = st.text(max_size=10)


def _optional(**members: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=members)


rules = st.builds(
    lambda conds, extra: {"conditions": conds, **extra},
    st.lists(arg_conditions, max_size=3),
    _optional(name=messages_text, on_deny=messages_text),
)
windows = st.sampled_from(["second", "minute", "hour", "day"])
limits = st.lists(
    st.builds(
        lambda counter, window, max_, extra: {
            "counter": counter,
            "window": window,
            "max": max_,
            **extra,
        },
        st.sampled_from(["c1", "c2", "calls", "a/b~c"]),
        windows,
        st.integers(0, 3),
        _optional(scope=st.sampled_from(["grant", "session", "global"]), on_deny=messages_text),
    ),
    max_size=3,
    unique_by=lambda limit: limit["counter"],
)


def action_rules(key: str) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Intercept-style `rules` for the tool entry `key` (state paths name their scope)."""
    scope = "_global" if key == "*" else key
    name = st.text(min_size=1, max_size=6)
    deny = st.builds(lambda n: {"name": n, "action": "deny"}, name)
    evaluate = st.builds(
        lambda n, conds: {"name": n, "conditions": conds},
        name,
        st.lists(arg_conditions, min_size=1, max_size=2),
    )
    rate = st.builds(lambda n, w: {"rate_limit": f"{n}/{w}"}, st.integers(1, 4), windows)
    state = st.builds(
        lambda n, counter, op, bound, window, extra, conds: {
            "name": n,
            "conditions": [
                {"path": f"state.{scope}.{counter}", "op": op, "value": bound},
                *conds,
            ],
            "state": {"counter": counter, "window": window, **extra},
        },
        name,
        st.sampled_from(["s1", "s2", "s.3"]),
        st.sampled_from(["lt", "lte"]),
        st.integers(-1, 5) | st.floats(-1, 5),
        windows,
        _optional(increment=st.integers(0, 3), increment_from=arg_paths),
        st.lists(arg_conditions, max_size=1),
    )

    def counter_of(rule: dict[str, Any]) -> str | None:
        if "state" in rule:
            return str(rule["state"]["counter"])
        if "rate_limit" in rule:
            return "_rate_" + rule["rate_limit"].split("/", 1)[1]
        return None

    def unique_counters(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen: set[str] = set()
        out = []
        for rule in items:
            counter = counter_of(rule)
            if counter is None or counter not in seen:
                out.append(rule)
                if counter is not None:
                    seen.add(counter)
        return out

    return st.lists(deny | evaluate | rate | state, max_size=3).map(unique_counters)


def tool_entries(key: str) -> st.SearchStrategy[dict[str, Any]]:
    return _optional(
        require=st.lists(rules, max_size=2),
        deny_if=st.lists(rules, max_size=2),
        limits=limits,
        rules=action_rules(key),
    )


policy_tools = tool_names | odd_tool_names
method_names = st.sampled_from([*OTHER_METHODS, *NOTIFICATIONS, "(response)", "custom"])
methods_sections = _optional(
    default=st.sampled_from(["allow", "deny"]),
    allow=st.lists(method_names, max_size=3, unique=True),
    deny=st.lists(method_names, max_size=2, unique=True),
)
hide_lists = (
    st.lists(policy_tools.filter(str.strip), max_size=3, unique=True)
    | st.just("*")
    | st.just(["*"])
)
policy_documents = st.lists(policy_tools, max_size=3, unique=True).flatmap(
    lambda tools: st.builds(
        lambda entries, extra: {"version": "1", "tools": entries, **extra},
        st.fixed_dictionaries({t: tool_entries(t) for t in tools}),
        _optional(
            default=st.sampled_from(["allow", "deny"]),
            description=messages_text,
            hide=hide_lists,
            all_tools=st.fixed_dictionaries({"limits": limits}),
            methods=methods_sections,
            strict_types=st.booleans(),
        ),
    )
)


def _load(document: dict[str, Any]) -> Policy:
    raw = json.dumps(document).encode()
    try:
        return load_policy(raw, name="p")
    except PolicyError as err:  # the strategy only builds documents the schema allows
        raise AssertionError(f"a schema-valid policy was rejected: {err}\n{raw!r}") from err


policies = policy_documents.map(_load)


def _cond(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


# Hand-written policies that exercise every section; cheaper to draw than `policies`.
FIXED_POLICIES = [
    load_policy(json.dumps(document).encode(), name=f"fixed-{i}")
    for i, document in enumerate(
        [
            {"version": "1"},
            {
                "version": "1",
                "default": "deny",
                "tools": {
                    "image.generate.gemini": {
                        "limits": [{"counter": "rate", "window": "minute", "max": 30}]
                    }
                },
            },
            {
                "version": "1",
                "default": "deny",
                "hide": ["a/b"],
                "all_tools": {"limits": [{"counter": "all", "window": "hour", "max": 1}]},
                "tools": {
                    "t": {
                        "require": [{"conditions": [_cond("args.mode", "in", ["safe", 1])]}],
                        "deny_if": [
                            {
                                "conditions": [
                                    _cond("args.n", "gt", 2),
                                    _cond("args.a", "exists", True),
                                ]
                            },
                            {"conditions": [_cond("args.b.c", "regex", "^x")]},
                            {"conditions": [_cond("args.a", "contains", "é")]},
                        ],
                        "limits": [
                            {"counter": "t", "window": "second", "max": 2, "scope": "session"}
                        ],
                    },
                    "*": {"deny_if": [{"conditions": [_cond("args.id", "eq", {"a": [1.0]})]}]},
                },
            },
            {
                "version": "1",
                "hide": "*",
                "methods": {"default": "deny", "allow": ["initialize", "ping"], "deny": ["ping"]},
                "tools": {"t": {"deny_if": [{"conditions": []}]}},
            },
            {
                "version": "1",
                "tools": {
                    "u": {
                        "rules": [
                            {"rate_limit": "2/minute"},
                            {"name": "no-x", "conditions": [_cond("args.a", "not_in", ["x"])]},
                            {
                                "name": "budget",
                                "conditions": [_cond("state.u.spent", "lte", 10)],
                                "state": {
                                    "counter": "spent",
                                    "window": "day",
                                    "increment_from": "args.n",
                                },
                            },
                        ]
                    },
                    "*": {"rules": [{"name": "stop", "action": "deny"}]},
                },
            },
        ]
    )
]
fixed_policies = st.sampled_from(FIXED_POLICIES)

# -- the pipeline on a fresh memory store ----------------------------------------------

GRANT = Grant(id="g-1", label="prop", policy="p")
TOKEN = "prop-token"
NOW = 1_000_040.0
BASE_HEADERS = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}


def run_pipeline(
    policy: Policy | None, body: bytes, headers: Mapping[str, str] | None = None
) -> Verdict:
    config = ConfigSet(
        grants=GrantTable({hash_token(TOKEN): GRANT}),
        policies={"p": policy} if policy is not None else {},
        fingerprint="properties",
        loaded_at=0.0,
    )
    authorizer = Authorizer(
        ConfigSource(root=Path("/nonexistent"), current=config),
        MemoryCounterStore(),
        clock=lambda: NOW,
    )
    http = HttpRequest("POST", "/mcp", {**BASE_HEADERS, **(headers or {})}, body)
    with structlog.testing.capture_logs():
        return asyncio.run(authorizer.check(http))


def expected_verdict(
    policy: Policy | None, body: bytes, headers: Mapping[str, str] | None = None
) -> tuple[Outcome, str | None, DenyKind | None]:
    """What the pipeline must answer, computed from the pure parts (model of `check`)."""
    headers = headers or {}
    try:
        request = parse_message(body, session_id=headers.get("mcp-session-id"))
    except McpParseError:
        return Outcome.DENY, "(parse)", DenyKind.BAD_REQUEST
    if check_mirror_headers(request, headers) is not None:
        return Outcome.DENY, "(headers)", DenyKind.BAD_REQUEST
    decision = decide(policy, GRANT, request)
    if decision.allowed and decision.claims:
        result = asyncio.run(MemoryCounterStore().reserve(decision.claims, NOW))
        decision = settle(decision, result)
    return decision.outcome, decision.rule, decision.kind


def summary(verdict: Verdict) -> tuple[Outcome, str | None, DenyKind | None]:
    return verdict.decision.outcome, verdict.decision.rule, verdict.decision.kind


# -- shared checks ---------------------------------------------------------------------

PARSE_CODES = {PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS}
FIXED_RULES = {"(no policy)", "(hidden)", "(default deny)"}
RULE_PREFIXES = ("/tools/", "/all_tools/", "/methods/", "/resources/", "/prompts/")


def parse_or_error(body: bytes) -> McpRequest | McpParseError:
    """Parse; any exception other than McpParseError fails the property."""
    try:
        request = parse_message(body, session_id="s-1")
    except McpParseError as exc:
        assert exc.code in PARSE_CODES, exc.code
        return exc
    assert isinstance(request, McpRequest)
    return request


def check_decision(policy: Policy | None, request: McpRequest) -> Decision:
    """`decide` returns a well-formed Decision (it must not raise)."""
    decision = decide(policy, GRANT, request)
    assert isinstance(decision, Decision)
    decision.message.encode("utf-8")  # the deny body and the audit line are UTF-8
    if decision.allowed:
        assert decision.kind is None
        assert policy is not None
    else:
        assert decision.kind is not None and not decision.claims
        assert isinstance(decision.rule, str)
        assert decision.rule in FIXED_RULES or decision.rule.startswith(RULE_PREFIXES)
    if policy is None:
        assert decision.rule == "(no policy)"
    elif request.is_content:
        # the methods section admits content methods when the document has one; without
        # it, default deny denies content no resources/prompts entry lets through
        document = policy.document
        sections = bool(document.resources or document.prompts or document.hide.resources)
        if document.has_methods and not document.methods.permits(request.method)[0]:
            assert not decision.allowed and str(decision.rule).startswith("/methods/")
        elif sections or document.hide.prompts:
            pass
        elif not document.has_methods and policy.default == "deny":
            assert decision.rule == "(default deny)"
        else:
            assert decision.allowed and not decision.claims
    elif not request.is_tool_call:
        methods = policy.document.methods  # deny wins, then allow, then the default
        allowed = request.method not in methods.deny and (
            request.method in methods.allow or methods.default == "allow"
        )
        assert decision.allowed is allowed and not decision.claims
    else:
        assert request.tool
        hidden = policy.is_hidden(request.tool)
        assert (decision.rule == "(hidden)") is hidden
        if not hidden and policy.default == "deny" and policy.tool(request.tool) is None:
            assert decision.rule == "(default deny)"
    return decision


def mirror_mismatch(request: McpRequest, headers: Mapping[str, str]) -> bool:
    """The documented rule: a present Mcp-Method / Mcp-Name must equal the body's (plain
    values only: the generated headers never use the SDK's `=?base64?...?=` form)."""
    if "mcp-method" in headers and headers["mcp-method"] != request.method:
        return True
    if "mcp-name" not in headers:
        return False
    member = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
    name = request.params.get(member[request.method]) if request.method in member else None
    return not isinstance(name, str) or headers["mcp-name"] != name


def assert_parsers_agree(body: bytes, value: Any) -> None:
    """What we accept, the upstream's parsers (stdlib json, pydantic/jiter) read alike."""
    assert canon(json.loads(body)) == canon(value)
    assert canon(pydantic_core.from_json(body)) == canon(value)


def request_key(request: McpRequest) -> tuple[Any, ...]:
    """Strict identity of a parsed request (types of numbers and ids included)."""
    return (
        request.method,
        type(request.id).__name__,
        request.id,
        request.is_notification,
        request.tool,
        canon(request.params),
        canon(request.arguments),
        request.session_id,
        request.resource,
        request.prompt,
    )


# -- 1. nothing but McpParseError, and decide never raises --------------------------------


@fast(300)
@given(body=st.binary(max_size=200), policy=fixed_policies)
@example(body=b"[" * 5000, policy=None).via("deep nesting")
@example(body=b'{"a":' * 70 + b"1" + b"}" * 70, policy=None).via("nesting over 64")
@example(body=b'"\\ud800"', policy=None).via("lone surrogate")
@example(body=b"\xef\xbb\xbf{}", policy=None).via("BOM")
def test_arbitrary_bytes(body: bytes, policy: Policy | None) -> None:
    result = parse_or_error(body)
    if isinstance(result, McpRequest):
        assert_parsers_agree(body, parse_json(body))
        headers = {"mcp-method": "x"}
        assert (check_mirror_headers(result, headers) is None) is (result.method == "x")
        check_decision(policy, result)


@fast(300)
@given(
    value=st.recursive(
        json_scalars | st.text(alphabet=st.characters(categories=["Cs", "Cc", "L"]), max_size=4),
        json_containers,
        max_leaves=20,
    ),
    ascii_only=st.booleans(),
    policy=fixed_policies,
)
def test_arbitrary_json(value: Any, ascii_only: bool, policy: Policy) -> None:
    try:
        body = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate cannot even be sent raw
        body = json.dumps(value, ensure_ascii=True).encode()
    result = parse_or_error(body)
    if isinstance(result, McpRequest):
        assert_parsers_agree(body, parse_json(body))
        check_decision(policy, result)


@fast(120)
@given(
    message=near_valid_messages(),
    rnd=st.randoms(use_true_random=False),
    policy=policies | fixed_policies,
    headers=st.fixed_dictionaries(
        {}, optional={"mcp-method": st.sampled_from(["tools/call", "x"]), "mcp-name": tool_names}
    ),
)
def test_near_valid_messages(
    message: Any, rnd: random.Random, policy: Policy, headers: dict[str, str]
) -> None:
    body = Style(rnd, escape=0.1, ws=0.1).dumps(to_tree(message))
    note(f"body={body!r}")
    result = parse_or_error(body)
    if isinstance(result, McpParseError):
        return
    assert_parsers_agree(body, parse_json(body))
    assert (check_mirror_headers(result, headers) is not None) is mirror_mismatch(result, headers)
    check_decision(policy, result)
    check_decision(None, result)


@fast(200)
@given(value=raw_values, rnd=st.randoms(use_true_random=False))
@example(value=[Raw("1e999")], rnd=random.Random(0)).via("overflow")
@example(value=[Raw("-0"), Raw("1E+2"), Raw("1e-400")], rnd=random.Random(0)).via("edges")
def test_number_literals_read_alike(value: Any, rnd: random.Random) -> None:
    """Any number literal we accept reads the same in every parser; the rest is -32700."""
    body = Style(rnd, escape=0.2, ws=0.2).dumps(value)
    note(f"body={body!r}")
    try:
        parsed = parse_json(body)
    except McpParseError as exc:
        assert exc.code == PARSE_ERROR
        return
    assert_parsers_agree(body, parsed)


# -- 2. determinism ---------------------------------------------------------------------


@fast(80)
@given(
    message=near_valid_messages(),
    policy=st.none() | fixed_policies | policies,
    headers=st.fixed_dictionaries(
        {},
        optional={
            "mcp-method": st.sampled_from(["tools/call", "ping"]),
            "mcp-name": tool_names,
            "mcp-session-id": st.sampled_from(["s-1", "s-2"]),
        },
    ),
)
def test_decisions_are_deterministic(
    message: Any, policy: Policy | None, headers: dict[str, str]
) -> None:
    body = plain(to_tree(message))
    note(f"body={body!r}")
    first, second = parse_or_error(body), parse_or_error(body)
    if isinstance(first, McpRequest):
        assert isinstance(second, McpRequest)
        assert request_key(first) == request_key(second)
        assert decide(policy, GRANT, first) == decide(policy, GRANT, second)
    else:
        assert isinstance(second, McpParseError)
        assert (first.code, first.message, first.request_id) == (
            second.code,
            second.message,
            second.request_id,
        )
    expected = expected_verdict(policy, body, headers)
    assert summary(run_pipeline(policy, body, headers)) == expected
    assert summary(run_pipeline(policy, body, headers)) == expected


# -- 3. duplicate keys --------------------------------------------------------------------


@st.composite
def with_duplicate_key(draw: st.DrawFn) -> tuple[Any, str, str]:
    """A valid message with one key duplicated, with a different value, in one object."""
    tree = to_tree(draw(mcp_messages))
    where, obj = draw(st.sampled_from(list(objects(tree))))
    if obj and draw(st.booleans()):
        key = draw(st.sampled_from([k for k, _ in obj]))
        original = next(v for k, v in obj if k == key)
        original_canon = canon(_untree(original))
    else:
        key = draw(keys)
        value = draw(json_values)
        obj.insert(draw(st.integers(0, len(obj))), (key, to_tree(value)))
        original_canon = canon(value)
    other = draw(json_values.filter(lambda v: canon(v) != original_canon))
    obj.insert(draw(st.integers(0, len(obj))), (key, to_tree(other)))
    return tree, where, key


def _untree(node: Any) -> Any:
    if isinstance(node, Obj):
        return {k: _untree(v) for k, v in node}
    if isinstance(node, list):
        return [_untree(v) for v in node]
    return node


@fast(100)
@given(case=with_duplicate_key(), rnd=st.randoms(use_true_random=False), policy=fixed_policies)
def test_duplicate_keys_are_rejected(
    case: tuple[Any, str, str], rnd: random.Random, policy: Policy
) -> None:
    tree, where, key = case
    body = Style(rnd, escape=0.15, ws=0.1).dumps(tree)
    note(f"duplicate {key!r} at {where}: body={body!r}")
    with pytest.raises(McpParseError) as raised:
        parse_message(body)
    assert raised.value.code == PARSE_ERROR
    verdict = run_pipeline(policy, body)
    assert summary(verdict) == (Outcome.DENY, "(parse)", DenyKind.BAD_REQUEST)
    assert verdict.decision.rpc_code == PARSE_ERROR


dup_prone_trees = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([1.0, "x", "/", "é"]),
    dup_prone_containers,
    max_leaves=10,
)


@fast(300)
@given(tree=dup_prone_trees, rnd=st.randoms(use_true_random=False))
def test_first_wins_and_last_wins_never_both_accepted(tree: Any, rnd: random.Random) -> None:
    body = Style(rnd, escape=0.3, ws=0.2).dumps(tree)
    note(f"body={body!r}")
    last = json.loads(body)
    first = json.loads(body, object_pairs_hook=_first_wins)
    try:
        ours = parse_json(body)
    except McpParseError as exc:
        assert exc.code == PARSE_ERROR
        assert has_duplicate_key(tree) or canon(first) == canon(last)
        return
    assert canon(first) == canon(last), "first-wins and last-wins readings differ"
    assert not has_duplicate_key(tree), "a duplicate key was accepted"
    assert canon(ours) == canon(last)
    assert_parsers_agree(body, ours)


# -- 4. and 5. escapes and whitespace ------------------------------------------------------


@fast(100)
@given(
    message=mcp_messages,
    rnd=st.randoms(use_true_random=False),
    escape=st.sampled_from([0.0, 0.3, 1.0]),
    ws=st.sampled_from([0.0, 0.3, 1.0]),
    policy=fixed_policies | policies,
)
def test_escapes_and_whitespace_change_nothing(
    message: dict[str, Any], rnd: random.Random, escape: float, ws: float, policy: Policy
) -> None:
    canonical = json.dumps(message).encode()
    variant = Style(rnd, escape=escape, ws=ws).dumps(to_tree(message))
    note(f"variant={variant!r}")
    base = parse_message(canonical, session_id="s-1")
    other = parse_message(variant, session_id="s-1")
    assert request_key(other) == request_key(base)
    assert decide(policy, GRANT, other) == decide(policy, GRANT, base)
    headers = {"mcp-method": base.method}
    assert check_mirror_headers(other, headers) == check_mirror_headers(base, headers)
    assert summary(run_pipeline(policy, variant)) == summary(run_pipeline(policy, canonical))


@fast(60)
@given(message=tool_calls(), rnd=st.randoms(use_true_random=False), policy=fixed_policies)
def test_escaping_every_character_changes_nothing(
    message: dict[str, Any], rnd: random.Random, policy: Policy
) -> None:
    """Every char of every string and key as \\uXXXX (or a short escape, `\\/`)."""
    variant = Style(rnd, escape=1.0).dumps(to_tree(message))
    base = parse_message(json.dumps(message).encode())
    other = parse_message(variant)
    assert request_key(other) == request_key(base)
    assert decide(policy, GRANT, other) == decide(policy, GRANT, base)


# -- mirror headers --------------------------------------------------------------------------


@fast(80)
@given(message=tool_calls(), method=st.text(max_size=12), name=st.text(max_size=12))
def test_mirror_headers_must_equal_the_body(
    message: dict[str, Any], method: str, name: str
) -> None:
    body = json.dumps(message).encode()
    tool = message["params"]["name"]
    ok = run_pipeline(None, body, {"mcp-method": "tools/call", "mcp-name": tool})
    assert ok.decision.rule != "(headers)"
    headers = {"mcp-method": method, "mcp-name": name}
    verdict = run_pipeline(None, body, headers)
    if method != "tools/call" or name != tool:
        assert verdict.decision.rule == "(headers)"
        assert verdict.decision.rpc_code == HEADER_MISMATCH
    else:
        assert verdict.decision.rule != "(headers)"


# -- secrets: deny messages carry no argument values ------------------------------------------

SENTINEL = "§secret§"


def _mark(value: Any) -> Any:
    if isinstance(value, str):
        return SENTINEL + value
    if isinstance(value, list):
        return [_mark(v) for v in value]
    if isinstance(value, dict):
        return {k: _mark(v) for k, v in value.items()}
    return value


@fast(100)
@given(message=tool_calls(), policy=fixed_policies | policies)
def test_decisions_never_echo_argument_values(message: dict[str, Any], policy: Policy) -> None:
    message["params"]["arguments"] = _mark(message["params"]["arguments"])
    body = json.dumps(message).encode()
    request = parse_message(body)
    decision = decide(policy, GRANT, request)
    assert SENTINEL not in decision.message
    verdict = run_pipeline(policy, body)
    assert SENTINEL not in verdict.decision.message


# -- policies are operator input: only PolicyError ----------------------------------------------


def _nest(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@st.composite
def hostile_policy_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    document: Any = draw(policy_documents)
    if kind == "mutated":
        tree = to_tree(document)
        where, obj = draw(st.sampled_from(list(objects(tree))))
        if obj and draw(st.booleans()):
            index = draw(st.integers(0, len(obj) - 1))
            obj[index] = (obj[index][0], to_tree(draw(json_values | number_literals.map(Raw))))
        else:
            obj.append((draw(keys), draw(raw_values)))
    note(f"mutated at {where}")
    return plain(tree)


CALL_ARGUMENTS: list[dict[str, Any]] = [
    {},
    {"a": 1, "n": 2.5, "mode": "x", "b": {"c": [1]}, "id": {"a": [1]}},
    {"n": -1, "a": None, "mode": "safe"},
    {"n": 10**30, "a": "é", "s": {"3": 1}},
    # what a lax MCP server converts, and a run that makes backtracking engines explode
    {"n": "500", "a": '["x", 1]', "b": '{"c": [1]}', "mode": 1, "id": "a" * 64 + "!"},
]


def check_loaded_policy(policy: Policy) -> None:
    """A loaded policy decides any call (and any other method) without raising."""
    for args in CALL_ARGUMENTS:
        for tool in ("t", "u", "image.generate.gemini", "unlisted"):
            params = {"name": tool, "arguments": args}
            for session in (None, "s-1"):
                request = McpRequest("tools/call", 1, False, params, tool, args, session)
                check_decision(policy, request)
    check_decision(policy, McpRequest("tools/list", 2, False))


def load_or_problems(raw: bytes) -> Policy | None:
    """Load a policy; None when it is rejected. Anything but PolicyError fails."""
    try:
        return load_policy(raw, name="fuzz")
    except PolicyError as err:
        assert err.problems
        return None


@fast(150)
@given(raw=hostile_policy_bytes())
def test_load_policy_raises_only_policy_error(raw: bytes) -> None:
    note(f"policy={raw[:300]!r}")
    policy = load_or_problems(raw)
    if policy is not None:
        check_loaded_policy(policy)


NESTING_PLACES = {
    "document": b"@@",
    "description": b'{"version":"1","description":@@}',
    "value": b'{"version":"1","tools":{"t":{"deny_if":[{"conditions":[{"path":"args.a",'
    b'"op":"eq","value":@@}]}]}}}',
}


@fast(30)
@given(depth=st.integers(1, 5000), where=st.sampled_from(sorted(NESTING_PLACES)))
@example(depth=5000, where="description").via("deep nesting in a policy")
def test_deeply_nested_policy_is_a_policy_error(depth: int, where: str) -> None:
    load_or_problems(NESTING_PLACES[where].replace(b"@@", _nest(depth)))


STATE_RULE = (
    '{"version":"1","tools":{"t":{"rules":[{"name":"r","conditions":[{"path":"state.t.c",'
    '"op":"%s","value":%s}],"state":{"counter":"c","window":"minute"}}]}}}'
)


@fast(100)
@given(op=st.sampled_from(["lt", "lte"]), bound=number_literals)
@example(op="lt", bound="1e999").via("state bound overflows to infinity")
def test_any_state_bound_the_loader_accepts_decides(op: str, bound: str) -> None:
    policy = load_or_problems((STATE_RULE % (op, bound)).encode())
    if policy is not None:
        check_loaded_policy(policy)


@fast(60)
@given(document=policy_documents)
def test_schema_valid_documents_load(document: dict[str, Any]) -> None:
    check_loaded_policy(_load(document))


def strings(node: Any, where: str = "$") -> Iterator[tuple[str, Obj | list[Any], int, bool]]:
    """Every string in a tree: (where, container, index, is_key)."""
    if isinstance(node, Obj):
        for i, (key, child) in enumerate(node):
            yield f"{where}.{key}", node, i, True
            if isinstance(child, str):
                yield f"{where}.{key}", node, i, False
            yield from strings(child, f"{where}.{key}")
    elif isinstance(node, list):
        for i, child in enumerate(node):
            if isinstance(child, str):
                yield f"{where}[{i}]", node, i, False
            yield from strings(child, f"{where}[{i}]")


@st.composite
def documents_with_lone_surrogate(draw: st.DrawFn) -> bytes:
    """A schema-valid policy with a lone surrogate escape (`\\udXXX`) in one string."""
    tree = to_tree(draw(policy_documents))
    where, container, index, is_key = draw(st.sampled_from(list(strings(tree))))
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    if isinstance(container, Obj):
        key, value = container[index]
        if is_key:
            key = key[: len(key) // 2] + surrogate + key[len(key) // 2 :]
        else:
            value = value + surrogate
        container[index] = (key, value)
    else:
        container[index] = container[index] + surrogate
    note(f"lone surrogate in {'key' if is_key else 'value'} at {where}")
    return json.dumps(_untree(tree), ensure_ascii=True).encode()


@fast(60)
@given(raw=documents_with_lone_surrogate())
@example(
    raw=b'{"version":"1","tools":{"\\ud800":{"rules":[{"name":"r","conditions":[{"path":'
    b'"state.x.c","op":"lt","value":5}],"state":{"counter":"c","window":"day"}}]}}}'
).via("surrogate in a message built by a validator: UnicodeEncodeError from pydantic")
@example(
    raw=b'{"version":"1","tools":{"t":{"deny_if":[{"conditions":[],"on_deny":"no \\ud800"}]}}}'
).via("surrogate in on_deny: the deny body cannot be encoded")
def test_lone_surrogates_in_policies(raw: bytes) -> None:
    """A policy string with a lone surrogate escape is refused (PolicyError), or at least
    never crashes the loader and never reaches a deny message (which must be UTF-8)."""
    note(f"policy={raw!r}")
    policy = load_or_problems(raw)
    if policy is not None:
        check_loaded_policy(policy)
