"""Tool classes (authz/catalog/classes.py): the documented, ordered rule set as tables —
every combination of the four MCP annotations, names (verbs in dotted, snake, camel and
upper case), schemas (a `command` property) and descriptions (money words), each row with
its class, risk and a part of its reason; the operator's overrides win over every rule;
`load_overrides` refuses every bad file with the JSON path of the problem; the ImageGen
upstream's tools, as its server lists them, are Write, medium risk."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from authz.catalog.classes import (
    CLASS_ORDER,
    OVERRIDES_FILE,
    RECOMMENDATIONS,
    Classification,
    Override,
    OverridesError,
    Risk,
    ToolClass,
    classify,
    classify_with,
    load_overrides,
    most_restrictive,
)
from tests.unit.pinning import imagegen_tools, probe_tools, tools_by_name

READ, WRITE, DELETE = ToolClass.READ, ToolClass.WRITE, ToolClass.DELETE
EXECUTE, FINANCIAL = ToolClass.EXECUTE, ToolClass.FINANCIAL
LOW, MEDIUM, HIGH, CRITICAL = Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL

WRITES: dict[str, Any] = {"readOnlyHint": False, "destructiveHint": False}
"""Annotations that declare a tool neither read-only nor destructive."""
NEUTRAL = "records.sync"
"""A name without a verb any rule reads."""


def tool(
    annotations: dict[str, Any] | None = None,
    description: str = "Keeps records in step.",
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    element: dict[str, Any] = {
        "description": description,
        "inputSchema": {"type": "object", "properties": properties or {"n": {"type": "integer"}}},
    }
    if annotations is not None:
        element["annotations"] = annotations
    return element


# -- the annotations: every combination ---------------------------------------------------

HINTS = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")
ABSENT = object()


def documented(hints: dict[str, bool]) -> tuple[ToolClass, Risk, list[str], list[str]]:
    """The class, risk, and reason parts that must (and must not) be there, for a tool whose
    name and description say nothing, read off the module docstring's rules."""
    read_only, destructive = hints.get("readOnlyHint"), hints.get("destructiveHint")
    idempotent, open_world = hints.get("idempotentHint"), hints.get("openWorldHint")
    outside = "reaches outside systems"
    if not hints:  # no annotations: MCP's defaults, destructive and open-world
        return DELETE, HIGH, ["no annotations", "destructive"], []
    if read_only is True:  # rule 3
        if open_world is True:
            return READ, MEDIUM, ["readOnlyHint is true", "openWorldHint"], []
        return READ, LOW, ["readOnlyHint is true"], [outside]
    world = ([outside], []) if open_world is not False else ([], [outside])
    if destructive is True:  # rule 4
        return DELETE, HIGH, ["destructiveHint is true", *world[0]], world[1]
    if destructive is None:  # rule 4: absent while not read-only is MCP's destructive default
        return DELETE, HIGH, ["does not say it is non-destructive", *world[0]], world[1]
    adds = "repeated calls add up"  # rule 6
    repeat = ([adds], []) if idempotent is not True else ([], [adds])
    parts = ["readOnlyHint false, destructiveHint false", *world[0], *repeat[0]]
    return WRITE, MEDIUM, parts, [*world[1], *repeat[1]]


COMBINATIONS = [
    {h: v for h, v in zip(HINTS, values, strict=True) if v is not ABSENT}
    for values in itertools.product((True, False, ABSENT), repeat=len(HINTS))
]


def combination_id(hints: dict[str, Any]) -> str:
    return ",".join(f"{h[:-4]}={v}" for h, v in hints.items()) or "no-hints"


@pytest.mark.parametrize("hints", COMBINATIONS, ids=[combination_id(h) for h in COMBINATIONS])
def test_every_combination_of_annotations(hints: dict[str, bool]) -> None:
    tool_class, risk, present, absent = documented(hints)
    found = classify(NEUTRAL, tool(hints))
    assert (found.tool_class, found.risk) == (tool_class, risk), found
    assert found.tool == NEUTRAL and found.source == "definition" and found.known
    for part in present:
        assert part in found.reason, (part, found.reason)
    for part in absent:
        assert part not in found.reason, (part, found.reason)


def test_a_tool_without_annotations_is_the_mcp_default() -> None:
    found = classify(NEUTRAL, tool(None))
    assert (found.tool_class, found.risk) == (DELETE, HIGH)
    assert found.reason == "no annotations: MCP's defaults make it a destructive, open-world tool"
    assert classify(NEUTRAL, tool({})) == found  # an empty object says no more


# -- names, schemas, descriptions: the ordered rules --------------------------------------


@dataclass
class Row:
    id: str
    name: str
    element: dict[str, Any]
    tool_class: ToolClass
    risk: Risk
    reason: str  # a part of the reason


ROWS: list[Row] = [
    # rule 2, financial: the name or the description speaks of money, before every other rule
    Row("name-payments", "payments.create", tool(WRITES), FINANCIAL, CRITICAL, "its name"),
    Row("camel-payment", "createPayment", tool(WRITES), FINANCIAL, CRITICAL, "('payment')"),
    Row("snake-refund", "issue_refund", tool(WRITES), FINANCIAL, CRITICAL, "('refund')"),
    Row("upper-invoice", "SEND_INVOICE", tool(WRITES), FINANCIAL, CRITICAL, "('invoice')"),
    Row("two-words", "transfer_funds", tool(WRITES), FINANCIAL, CRITICAL, "('transfer funds')"),
    Row("camel-two-words", "transferFunds", tool(WRITES), FINANCIAL, CRITICAL, "transfer funds"),
    Row("wallet", "wallet.topup", tool(WRITES), FINANCIAL, CRITICAL, "('wallet')"),
    Row(
        "description-billing",
        "account.update",
        tool(WRITES, "Changes the billing address."),
        FINANCIAL,
        CRITICAL,
        "its description speaks of money ('billing')",
    ),
    Row(
        "description-charges",
        "card.use",
        tool(WRITES, "Charges the customer's card."),
        FINANCIAL,
        CRITICAL,
        "its description speaks of money",
    ),
    Row(
        "description-refunded",
        "order.close",
        tool(WRITES, "Closes an order; the buyer is refunded."),
        FINANCIAL,
        CRITICAL,
        "its description speaks of money",
    ),
    Row(
        "description-paid",
        "order.settle",
        tool(WRITES, "Marks an order as paid and ships it."),
        FINANCIAL,
        CRITICAL,
        "its description speaks of money",
    ),
    Row(
        "description-purchases",
        "cart.finish",
        tool(WRITES, "Completes purchases in the cart."),
        FINANCIAL,
        CRITICAL,
        "its description speaks of money",
    ),
    Row(
        "financial-before-read-only",
        "billing.get",
        tool({"readOnlyHint": True}),
        FINANCIAL,
        CRITICAL,
        "('billing')",
    ),
    Row(
        "financial-before-execute",
        "run_payment",
        tool(WRITES, properties={"command": {"type": "string"}}),
        FINANCIAL,
        CRITICAL,
        "('payment')",
    ),
    Row("financial-unannotated", "payout", tool(None), FINANCIAL, CRITICAL, "('payout')"),
    # money words inside other words are not money words
    Row("display-is-not-pay", "screen.display", tool(WRITES), WRITE, MEDIUM, "destructiveHint"),
    Row(
        "payload-is-not-pay",
        "blob.store",
        tool(WRITES, "Stores the payload."),
        WRITE,
        MEDIUM,
        "destructiveHint false",
    ),
    # rule 3, read: readOnlyHint true wins over the names and schemas of the rules below it
    Row("read-only", "notes.sync", tool({"readOnlyHint": True}), READ, LOW, "changes nothing"),
    Row(
        "read-only-delete-name",
        "files.delete",
        tool({"readOnlyHint": True, "openWorldHint": False}),
        READ,
        LOW,
        "readOnlyHint is true",
    ),
    Row(
        "read-only-command",
        "shell.preview",
        tool({"readOnlyHint": True}, properties={"command": {"type": "string"}}),
        READ,
        LOW,
        "readOnlyHint is true",
    ),
    Row(
        "read-only-open-world",
        "web.fetch",
        tool({"readOnlyHint": True, "openWorldHint": True}),
        READ,
        MEDIUM,
        "reaches outside systems (openWorldHint)",
    ),
    # rule 4, delete: destructiveHint, MCP's default, or a delete verb in the name
    Row("dotted-delete", "files.delete", tool(WRITES), DELETE, HIGH, "its name says 'delete'"),
    Row("camel-delete", "deleteUser", tool(WRITES), DELETE, HIGH, "its name says 'delete'"),
    Row("pascal-remove", "RemoveMember", tool(WRITES), DELETE, HIGH, "its name says 'remove'"),
    Row("snake-purge", "purge_cache", tool(WRITES), DELETE, HIGH, "its name says 'purge'"),
    Row("upper-drop", "DROP_TABLE", tool(WRITES), DELETE, HIGH, "its name says 'drop'"),
    Row("kebab-wipe", "disk-wipe", tool(WRITES), DELETE, HIGH, "its name says 'wipe'"),
    Row("acronym-truncate", "SQLTruncate", tool(WRITES), DELETE, HIGH, "its name says 'truncate'"),
    Row("unannotated-erase", "erase", tool(None), DELETE, HIGH, "its name says 'erase'"),
    Row(
        "destructive-hint",
        "notes.sync",
        tool({"destructiveHint": True, "readOnlyHint": False, "openWorldHint": False}),
        DELETE,
        HIGH,
        "destructiveHint is true: it can destroy data",
    ),
    Row(
        "delete-before-execute",
        "delete_and_run",
        tool(WRITES, properties={"script": {"type": "string"}}),
        DELETE,
        HIGH,
        "its name says 'delete'",
    ),
    Row(
        "mcp-default-before-execute",
        "shell.run",
        tool({"readOnlyHint": False}),
        DELETE,
        HIGH,
        "does not say it is non-destructive",
    ),
    Row("delete-inside-a-word", "undeleted.sync", tool(WRITES), WRITE, MEDIUM, "destructiveHint"),
    # rule 5, execute: an execute verb in the name, or a command-like property
    Row("dotted-run", "task.run", tool(WRITES), EXECUTE, HIGH, "its name says 'run'"),
    Row("camel-run", "runScript", tool(WRITES), EXECUTE, HIGH, "its name says 'run'"),
    Row("snake-exec", "sandbox_exec", tool(WRITES), EXECUTE, HIGH, "its name says 'exec'"),
    Row("upper-eval", "EVAL_EXPRESSION", tool(WRITES), EXECUTE, HIGH, "its name says 'eval'"),
    Row("invoke", "lambda.invoke", tool(WRITES), EXECUTE, HIGH, "runs what it is given"),
    Row(
        "command-property",
        "task.start",
        tool(WRITES, properties={"command": {"type": "string"}}),
        EXECUTE,
        HIGH,
        "it takes 'command': it runs what it is given",
    ),
    Row(
        "code-property",
        "notebook.cell",
        tool(WRITES, properties={"code": {"type": "string"}, "lang": {"type": "string"}}),
        EXECUTE,
        HIGH,
        "it takes 'code'",
    ),
    Row(
        "script-property-unannotated",
        "automation.step",
        tool(None, properties={"script": {"type": "string"}}),
        EXECUTE,
        HIGH,
        "it takes 'script'",
    ),
    Row("unannotated-shell", "shell", tool(None), EXECUTE, HIGH, "its name says 'shell'"),
    Row(
        "execute-before-a-read-name",
        "fetch_and_run",
        tool(None),
        EXECUTE,
        HIGH,
        "its name says 'run'",
    ),
    # without annotations, a name that reads like a query (rule 3'); else MCP's default
    Row("unannotated-list", "notes.list", tool(None), READ, LOW, "no annotations; its name says"),
    Row("unannotated-camel-get", "getUser", tool(None), READ, LOW, "its name says 'get'"),
    Row("unannotated-upper-search", "SEARCH_DOCS", tool(None), READ, LOW, "says 'search'"),
    Row("unannotated-lookup", "dns.lookup", tool(None), READ, LOW, "it looks things up"),
    Row("list-inside-a-word", "music.playlist", tool(None), DELETE, HIGH, "no annotations"),
    # annotations, when present, win over a name that reads like a query
    Row("annotated-list", "notes.list", tool(WRITES), WRITE, MEDIUM, "destructiveHint false"),
    Row(
        "annotated-list-mcp-default",
        "notes.list",
        tool({"readOnlyHint": False}),
        DELETE,
        HIGH,
        "MCP's default",
    ),
    Row(
        "hint-not-a-boolean",
        "notes.list",
        tool({"readOnlyHint": "true", "destructiveHint": "false"}),
        DELETE,
        HIGH,
        "does not say it is non-destructive",
    ),
    # rule 6, write: everything else
    Row(
        "write",
        "records.sync",
        tool({**WRITES, "idempotentHint": True, "openWorldHint": False}),
        WRITE,
        MEDIUM,
        "it creates or changes things or consumes resources",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_rules_in_their_order(row: Row) -> None:
    found = classify(row.name, row.element)
    assert (found.tool_class, found.risk) == (row.tool_class, row.risk), found
    assert row.reason in found.reason, found.reason
    assert (found.tool, found.source) == (row.name, "definition")


def test_the_same_definition_is_classified_the_same() -> None:
    element = tool(WRITES, properties={"command": {}, "cmd": {}, "code": {}})
    first = classify("task.start", element)
    assert [classify("task.start", element) for _ in range(5)] == [first] * 5
    assert first.reason.startswith("it takes 'cmd'")  # the first of them, sorted


# -- the two upstreams, as their servers list them -----------------------------------------


def test_the_imagegen_tools_are_write_medium_with_a_reason() -> None:
    elements = tools_by_name(imagegen_tools())
    assert sorted(elements) == [
        "image.generate.gemini",
        "image.generate.google",
        "image.generate.openai",
        "image.generate.replicate",
    ]
    for name, element in elements.items():
        found = classify(name, element)
        assert (found.tool_class, found.risk) == (WRITE, MEDIUM), found
        assert "creates or changes things or consumes resources" in found.reason, found
        assert "reaches outside systems" in found.reason, found  # openWorldHint: true
        assert "repeated calls add up" in found.reason, found  # idempotentHint: false


def test_the_probe_tools_are_read_write_delete() -> None:
    found = {name: classify(name, e) for name, e in tools_by_name(probe_tools()).items()}
    assert {name: (c.tool_class, c.risk) for name, c in found.items()} == {
        "probe.read": (READ, LOW),
        "probe.write": (WRITE, MEDIUM),
        "probe.delete": (DELETE, HIGH),
    }


# -- overrides -----------------------------------------------------------------------------

DEFINITIONS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "financial": ("payments.create", tool(WRITES)),
    "read-only": ("notes.list", tool({"readOnlyHint": True})),
    "destructive": ("files.delete", tool({"destructiveHint": True})),
    "execute": ("shell.run", tool(WRITES, properties={"command": {}})),
    "write": ("records.sync", tool(WRITES)),
    "no-annotations": ("records.sync", tool(None)),
    "no-definition": ("records.sync", None),
}
DEFAULT_RISK = {READ: LOW, WRITE: MEDIUM, EXECUTE: HIGH, DELETE: HIGH, FINANCIAL: CRITICAL}


@pytest.mark.parametrize("tool_class", list(ToolClass), ids=[c.value for c in ToolClass])
@pytest.mark.parametrize("definition", list(DEFINITIONS), ids=list(DEFINITIONS))
def test_an_override_wins_over_every_rule(definition: str, tool_class: ToolClass) -> None:
    name, element = DEFINITIONS[definition]
    bare = classify_with(name, element, {name: Override(tool_class)})
    assert bare == Classification(
        name,
        tool_class,
        DEFAULT_RISK[tool_class],
        f"the operator classified it ({OVERRIDES_FILE})",
        "override",
    )
    said = Override(tool_class, Risk.LOW, "reviewed: the sandbox has no network")
    assert classify_with(name, element, {name: said}) == Classification(
        name, tool_class, Risk.LOW, "reviewed: the sandbox has no network", "override"
    )


def test_an_override_of_another_tool_changes_nothing() -> None:
    element = tool(WRITES)
    others = {"other": Override(FINANCIAL)}
    assert classify_with("records.sync", element, others) == classify("records.sync", element)


def test_without_a_definition_or_an_override_the_class_is_unknown() -> None:
    found = classify_with("probe.new", None, {"other": Override(READ)})
    assert found == Classification(
        "probe.new", None, None, f"not pinned and not in {OVERRIDES_FILE}: class unknown", "unknown"
    )
    assert not found.known


def test_load_overrides_reads_class_risk_and_reason() -> None:
    raw = (
        b'{"version": 1, "tools": {'
        b'"image.generate.gemini": {"class": "write", "risk": "high", "reason": "costs money"},'
        b'"probe.read": {"class": "delete"},'
        b'"a.b/c": {"class": "financial", "reason": "moves funds"}}}'
    )
    assert dict(load_overrides(raw)) == {
        "image.generate.gemini": Override(WRITE, Risk.HIGH, "costs money"),
        "probe.read": Override(DELETE),
        "a.b/c": Override(FINANCIAL, None, "moves funds"),
    }
    assert dict(load_overrides(b'{"version": 1}')) == {}
    assert dict(load_overrides(b'{"version": 1, "tools": {}}')) == {}


BAD_OVERRIDES: list[tuple[str, bytes, list[str]]] = [
    ("not-json", b"{nope", ["$: invalid JSON"]),
    ("truncated", b'{"version": 1, "tools": {', ["$: invalid JSON"]),
    ("not-an-object", b'["write"]', ["$: must be a JSON object with version and tools"]),
    ("duplicate-key", b'{"version": 1, "version": 1}', ["$.version: duplicate key 'version'"]),
    (
        "duplicate-tool",
        b'{"version": 1, "tools": {"t": {"class": "read"}, "t": {"class": "financial"}}}',
        ["$.tools.t: duplicate key 't'"],
    ),
    ("no-version", b'{"tools": {}}', ["$.version: must be 1"]),
    ("version-2", b'{"version": 2}', ["$.version: must be 1"]),
    ("version-string", b'{"version": "1"}', ["$.version: must be 1"]),
    ("version-true", b'{"version": true}', ["$.version: must be 1"]),
    ("version-float", b'{"version": 1.0}', ["$.version: must be 1"]),
    ("unknown-top-member", b'{"version": 1, "tool": {}}', ["$.tool: unknown member"]),
    (
        "unknown-top-member-quoted",
        b'{"version": 1, "the tools": {}}',
        ["$['the tools']: unknown member; the file has version and tools"],
    ),
    ("tools-a-list", b'{"version": 1, "tools": []}', ["$.tools: must be an object"]),
    (
        "entry-a-string",
        b'{"version": 1, "tools": {"t": "write"}}',
        ['$.tools.t: must be an object such as {"class": "write"}'],
    ),
    (
        "unknown-class",
        b'{"version": 1, "tools": {"a.b": {"class": "admin"}}}',
        ["$.tools['a.b'].class: must be one of read, write, delete, execute, financial"],
    ),
    ("no-class", b'{"version": 1, "tools": {"t": {}}}', ["$.tools.t.class: must be one of"]),
    (
        "class-a-list",
        b'{"version": 1, "tools": {"t": {"class": ["write"]}}}',
        ["$.tools.t.class: must be one of"],
    ),
    (
        "class-upper-case",
        b'{"version": 1, "tools": {"t": {"class": "Write"}}}',
        ["$.tools.t.class: must be one of"],
    ),
    (
        "bad-risk",
        b'{"version": 1, "tools": {"t": {"class": "write", "risk": "severe"}}}',
        ["$.tools.t.risk: must be one of low, medium, high, critical"],
    ),
    (
        "risk-an-object",
        b'{"version": 1, "tools": {"t": {"class": "write", "risk": {"level": "low"}}}}',
        ["$.tools.t.risk: must be one of"],
    ),
    (
        "reason-a-number",
        b'{"version": 1, "tools": {"t": {"class": "write", "reason": 7}}}',
        ["$.tools.t.reason: must be a string"],
    ),
    (
        "unknown-member",
        b'{"version": 1, "tools": {"t": {"class": "write", "why": "x"}}}',
        ["$.tools.t.why: unknown member; use class, risk, reason"],
    ),
    (
        "unknown-member-quoted",
        b'{"version": 1, "tools": {"a.b": {"class": "write", "the why": "x"}}}',
        ["$.tools['a.b']['the why']: unknown member"],
    ),
    (
        "every-problem-at-once",
        b'{"version": 3, "extra": 1, "tools": {"a": {"class": "x"}, "b": {"class": "read", '
        b'"risk": "none"}}}',
        [
            "$.extra: unknown member",
            "$.version: must be 1",
            "$.tools.a.class: must be one of",
            "$.tools.b.risk: must be one of",
        ],
    ),
]


@pytest.mark.parametrize(
    ("raw", "problems"),
    [(raw, problems) for _, raw, problems in BAD_OVERRIDES],
    ids=[case for case, _, _ in BAD_OVERRIDES],
)
def test_load_overrides_refuses_a_bad_file_naming_the_path(raw: bytes, problems: list[str]) -> None:
    with pytest.raises(OverridesError) as info:
        load_overrides(raw)
    found = [f"{where}: {message}" for where, message in info.value.problems]
    assert len(found) == len(problems), found
    for expected, got in zip(problems, found, strict=True):
        assert got.startswith(expected), (expected, got)
    assert str(info.value) == "; ".join(found)


# -- the order of classes ------------------------------------------------------------------


def test_most_restrictive_follows_the_class_order() -> None:
    assert CLASS_ORDER == (READ, WRITE, EXECUTE, DELETE, FINANCIAL)
    assert most_restrictive(set()) is None
    assert most_restrictive({READ}) is READ
    assert most_restrictive({READ, WRITE}) is WRITE
    assert most_restrictive({WRITE, EXECUTE}) is EXECUTE
    assert most_restrictive(frozenset({READ, WRITE, DELETE})) is DELETE
    assert most_restrictive({DELETE, EXECUTE}) is DELETE
    assert most_restrictive(set(ToolClass)) is FINANCIAL
    assert set(RECOMMENDATIONS) == set(ToolClass)
    assert "rate-limited" in RECOMMENDATIONS[WRITE]
