"""What both fuzz targets share: fixed policies, fixed requests and the invariants.

Imported by the targets inside `atheris.instrument_imports(include=["authz"])`, so the
`authz` modules it imports are instrumented for coverage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from authz.engine import decide
from authz.model import CONTENT_METHODS, Decision, Grant, McpRequest
from authz.policy import Policy, load_policy

ROOT = Path(__file__).resolve().parent.parent
GRANT = Grant(id="g-1", label="fuzz", policy="fuzz")
FIXED_RULES = frozenset({"(no policy)", "(hidden)", "(default deny)"})
RULE_PREFIXES = ("/tools/", "/all_tools/", "/methods/", "/resources/", "/prompts/")


def _cond(path: str, op: str, value: Any) -> dict[str, Any]:
    return {"path": path, "op": op, "value": value}


# Every section and operator, with paths the seed corpus uses (args.prompt, args.n …).
RICH_POLICY: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "hide": ["image.generate.replicate"],
    "methods": {
        "default": "deny",
        "allow": ["initialize", "ping", "tools/list", "notifications/initialized", "x/y"],
        "deny": ["x/y", "(response)"],
    },
    "all_tools": {"limits": [{"counter": "all", "window": "hour", "max": 100, "scope": "grant"}]},
    "tools": {
        "image.generate.gemini": {
            "require": [{"conditions": [_cond("args.prompt", "exists", True)]}],
            "deny_if": [
                {"conditions": [_cond("args.returnBase64", "eq", True)]},
                {"conditions": [_cond("args.n", "gt", 4), _cond("args.size", "neq", "small")]},
                {"conditions": [_cond("args.prompt", "regex", "(?i)forbidden|secret")]},
                {"conditions": [_cond("args.tags", "contains", "nsfw")]},
                {"conditions": [_cond("args.model", "not_in", ["flash", "pro"])]},
                {"conditions": [_cond("args.opts.seed", "lte", -1)]},
                {"conditions": [_cond("args.opts.mode", "in", ["raw", 1, None])]},
                {"conditions": [_cond("args.n", "lt", 0), _cond("args.n", "gte", -10)]},
            ],
            "limits": [{"counter": "gemini", "window": "minute", "max": 3, "scope": "session"}],
        },
        "image.generate.openai": {
            "rules": [
                {"rate_limit": "5/minute"},
                {"name": "no-hd", "conditions": [_cond("args.quality", "neq", "hd")]},
                {
                    "name": "budget",
                    "conditions": [_cond("state.image.generate.openai.spent", "lt", 50)],
                    "state": {"counter": "spent", "window": "day", "increment_from": "args.n"},
                },
            ]
        },
        "*": {"deny_if": [{"conditions": [_cond("args.admin", "exists", True)]}]},
    },
}


def fixed_policies() -> list[Policy | None]:
    """The policies every accepted message is decided against (None: not loaded)."""
    out: list[Policy | None] = [None, load_policy(json.dumps(RICH_POLICY), name="rich")]
    for path in sorted((ROOT / "deploy" / "config" / "policies").glob("*.json")):
        out.append(load_policy(path.read_bytes(), name=path.stem))
    out.append(load_policy(b'{"version":"1","hide":"*"}', name="hide-all"))
    return out


def check_decision(policy: Policy | None, request: McpRequest) -> Decision:
    """`decide` returns a well-formed, deterministic Decision; any violation raises."""
    decision = decide(policy, GRANT, request)
    if decide(policy, GRANT, request) != decision:
        raise AssertionError("decide is not deterministic")
    decision.message.encode("utf-8")  # the deny body and the audit line are UTF-8
    if decision.allowed:
        if decision.kind is not None or policy is None:
            raise AssertionError(f"malformed allow: {decision!r}")
    else:
        rule = decision.rule
        if decision.kind is None or decision.claims or not isinstance(rule, str):
            raise AssertionError(f"malformed deny: {decision!r}")
        if rule not in FIXED_RULES and not rule.startswith(RULE_PREFIXES):
            raise AssertionError(f"deny names no rule pointer: {decision!r}")
    if policy is not None and not request.is_tool_call:
        methods = policy.document.methods  # deny wins, then allow, then the default
        admitted = request.method not in methods.deny and (
            request.method in methods.allow or methods.default == "allow"
        )
        if request.method not in CONTENT_METHODS:
            if decision.allowed is not admitted:
                raise AssertionError(f"method {request.method!r} decided against 'methods'")
        elif policy.has_methods and not admitted and decision.allowed:
            raise AssertionError(f"content method {request.method!r} admitted against 'methods'")
        elif not decision.allowed and not isinstance(decision.rule, str):
            raise AssertionError(f"content denial names no rule: {decision!r}")
        elif (
            not decision.allowed
            and decision.kind is not None
            and decision.kind.value == "policy"
            and not (
                decision.rule in ("(default deny)", "(hidden)")
                or str(decision.rule).startswith(("/resources/", "/prompts/", "/methods/"))
            )
        ):
            raise AssertionError(f"content denied by a rule of another kind: {decision!r}")
    return decision


def canon(value: Any) -> str:
    """A strict comparison key: 1, 1.0 and true differ; object member order does not."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)
