"""Tool classes, pure: what a tool does (Read, Write, Delete, Execute, Financial), how risky
it is, and why, from its `tools/list` definition; and the operator's overrides.

The rule set is deterministic and ordered; the first rule that applies decides:

1. **Override.** The operator's `tool-classes.json` in the configuration directory names
   the tool: its class (and risk and reason, when given) win over everything below.
2. **Financial.** The name or description speaks of money: a word such as payment, pay,
   charge, refund, invoice, billing, purchase, checkout, wallet, payout, transfer funds
   (`FINANCIAL_WORDS`), or one of its forms (charges, refunded, paid, purchasing).
3. **Read.** `annotations.readOnlyHint` is true.
4. **Delete.** `destructiveHint` is true; or the tool has annotations, `readOnlyHint` is
   not true and `destructiveHint` is absent (the MCP default for a tool that is not
   read-only is destructive); or a word of its name is one of delete, remove, drop,
   destroy, purge, wipe, erase, truncate.
5. **Execute.** A word of its name is one of exec, execute, run, eval, shell, spawn,
   invoke, or the input schema has a property named command, cmd, code, script or shell.
6. **No annotations.** A name with a word that reads like a query (get, list, read,
   search, fetch, query, describe, show, find, lookup) is Read; any other is Delete (MCP's
   defaults: destructive and open-world). Annotations, when present, win over such names.
7. **Write.** Everything else: a tool that is declared not read-only and not destructive.

A name's words are split at dots, dashes, underscores, case changes and digits
(`deleteUser`, `DROP_TABLE`, `SQLTruncate`: delete, drop, truncate).

Risk: Read is low (medium when it reaches outside systems, `openWorldHint` true); Write is
medium; Execute and Delete are high; Financial is critical. The reason says which facts
decided, in words an operator can check against the definition.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CLASS_ORDER",
    "FINANCIAL_WORDS",
    "OVERRIDES_FILE",
    "RECOMMENDATIONS",
    "Classification",
    "Override",
    "OverridesError",
    "Risk",
    "ToolClass",
    "classify",
    "classify_with",
    "load_overrides",
    "most_restrictive",
]


class ToolClass(enum.StrEnum):
    """What a tool does. The values are the keys of a policy's `classes` section."""

    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    EXECUTE = "execute"
    FINANCIAL = "financial"


class Risk(enum.StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


CLASS_ORDER: Final = (
    ToolClass.READ,
    ToolClass.WRITE,
    ToolClass.EXECUTE,
    ToolClass.DELETE,
    ToolClass.FINANCIAL,
)
"""From the least restrictive to the most: a tool of unknown class is judged as the last
of these that a policy names (`most_restrictive`)."""

RECOMMENDATIONS: Final = {
    ToolClass.READ: "Read tools rarely need more than a rate limit; hide the ones that "
    "reach data an agent should not see.",
    ToolClass.WRITE: "Write tools should be rate-limited to prevent accidental bulk modifications.",
    ToolClass.EXECUTE: "Execute tools should be limited to the grants that need them and "
    "held for approval when their input is free text.",
    ToolClass.DELETE: "Delete tools should need a person's approval (approve_if) or be "
    "denied to agents.",
    ToolClass.FINANCIAL: "Financial tools should be denied to agents, or held for approval "
    "with a tight limit.",
}
"""The rule a class calls for, shown by `mcp-authz catalog`."""

FINANCIAL_WORDS: Final = (
    "payment",
    "payments",
    "pay",
    "payout",
    "charge",
    "refund",
    "invoice",
    "billing",
    "purchase",
    "checkout",
    "wallet",
    "transfer funds",
    "money",
)


def _forms(word: str) -> list[str]:
    """A money word and its inflected forms: charge → charges, charged, charging."""
    stem = word[:-1] if word.endswith("e") else word
    return [word, word + "s", word + "es", word + "d", word + "ed", stem + "ing"]


_MONEY = "|".join(re.escape(f) for w in (*FINANCIAL_WORDS, "paid") for f in _forms(w))
_FINANCIAL = re.compile(rf"\b({_MONEY})\b", re.I)
_DELETE_VERBS: Final = frozenset(
    {"delete", "remove", "drop", "destroy", "purge", "wipe", "erase", "truncate"}
)
_EXECUTE_VERBS: Final = frozenset({"exec", "execute", "run", "eval", "shell", "spawn", "invoke"})
_EXECUTE_PROPERTIES: Final = frozenset({"command", "cmd", "code", "script", "shell"})
_READ_VERBS: Final = frozenset(
    {"get", "list", "read", "search", "fetch", "query", "describe", "show", "find", "lookup"}
)
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Za-z][a-z]*")


@dataclass(frozen=True, slots=True)
class Classification:
    """A tool's class, risk and why; `source` is `override`, `definition` or `unknown`."""

    tool: str
    tool_class: ToolClass | None
    risk: Risk | None
    reason: str
    source: str

    @property
    def known(self) -> bool:
        return self.tool_class is not None


def _words(name: str) -> list[str]:
    """The words of a tool name: `image.generate.gemini` → image, generate, gemini;
    `deleteUser` → delete, user; `DROP_TABLE` → drop, table; `SQLTruncate` → sql, truncate."""
    return [w.lower() for w in _WORDS.findall(name)]


def _hint(annotations: Mapping[str, Any], key: str) -> bool | None:
    value = annotations.get(key)
    return value if isinstance(value, bool) else None


def classify(name: str, element: Mapping[str, Any]) -> Classification:
    """Classify a tool from its `tools/list` element (or a lock entry: the same members)."""
    annotations = element.get("annotations")
    hints: Mapping[str, Any] = annotations if isinstance(annotations, Mapping) else {}
    description = element.get("description")
    words = _words(name)
    spoken = " ".join(words)
    text = f"{spoken} {description if isinstance(description, str) else ''}"
    read_only = _hint(hints, "readOnlyHint")
    destructive = _hint(hints, "destructiveHint")
    open_world = _hint(hints, "openWorldHint")
    idempotent = _hint(hints, "idempotentHint")
    world = " and reaches outside systems" if open_world is not False else ""

    found = _FINANCIAL.search(text)
    if found:
        where = "name" if _FINANCIAL.search(spoken) else "description"
        return Classification(
            name,
            ToolClass.FINANCIAL,
            Risk.CRITICAL,
            f"its {where} speaks of money ({found.group(1).lower()!r}): it can move or "
            "commit funds",
            "definition",
        )
    if read_only is True:
        risk = Risk.MEDIUM if open_world is True else Risk.LOW
        return Classification(
            name,
            ToolClass.READ,
            risk,
            "readOnlyHint is true: it changes nothing"
            + (", but it reaches outside systems (openWorldHint)" if open_world is True else ""),
            "definition",
        )
    verb = next((w for w in words if w in _DELETE_VERBS), None)
    if destructive is True or verb is not None or (destructive is None and hints):
        if destructive is True:
            why = "destructiveHint is true"
        elif verb is not None:
            why = f"its name says {verb!r}"
        else:
            why = "it is not read-only and does not say it is non-destructive (MCP's default)"
        return Classification(
            name, ToolClass.DELETE, Risk.HIGH, f"{why}: it can destroy data{world}", "definition"
        )
    schema = element.get("inputSchema")
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    command = (
        sorted(set(properties) & _EXECUTE_PROPERTIES) if isinstance(properties, Mapping) else []
    )
    verb = next((w for w in words if w in _EXECUTE_VERBS), None)
    if verb is not None or command:
        why = f"its name says {verb!r}" if verb is not None else f"it takes {command[0]!r}"
        return Classification(
            name, ToolClass.EXECUTE, Risk.HIGH, f"{why}: it runs what it is given", "definition"
        )
    if not hints:
        verb = next((w for w in words if w in _READ_VERBS), None)
        if verb is not None:
            return Classification(
                name,
                ToolClass.READ,
                Risk.LOW,
                f"no annotations; its name says {verb!r}: it looks things up",
                "definition",
            )
        return Classification(
            name,
            ToolClass.DELETE,
            Risk.HIGH,
            "no annotations: MCP's defaults make it a destructive, open-world tool",
            "definition",
        )
    repeat = "; repeated calls add up" if idempotent is not True else ""
    return Classification(
        name,
        ToolClass.WRITE,
        Risk.MEDIUM,
        f"readOnlyHint false, destructiveHint false: it creates or changes things or "
        f"consumes resources{world}{repeat}",
        "definition",
    )


def most_restrictive(named: set[ToolClass] | frozenset[ToolClass]) -> ToolClass | None:
    """The most restrictive of the classes a policy names (None: it names none)."""
    for tool_class in reversed(CLASS_ORDER):
        if tool_class in named:
            return tool_class
    return None


# -- the operator's overrides ------------------------------------------------------------

OVERRIDES_FILE: Final = "tool-classes.json"


class OverridesError(ValueError):
    """`tool-classes.json` cannot be used; `problems` are (JSON path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{where}: {message}" for where, message in problems))


@dataclass(frozen=True, slots=True)
class Override:
    """The operator's word on one tool: its class, and optionally its risk and why."""

    tool_class: ToolClass
    risk: Risk | None = None
    reason: str | None = None


def load_overrides(raw: bytes) -> Mapping[str, Override]:
    """Read `tool-classes.json`::

        {"version": 1,
         "tools": {"<tool>": {"class": "financial", "risk": "critical", "reason": "..."}}}

    Every problem is reported at once, each with its JSON path (`OverridesError`)."""
    from authz import strictjson  # the one strict reader (duplicate keys, depth, ...)

    try:
        document = strictjson.loads(raw)
    except strictjson.StrictJsonError as exc:
        raise OverridesError(
            [(strictjson.json_path(loc), message) for loc, message in exc.problems]
        ) from None
    if not isinstance(document, dict):
        raise OverridesError([("$", "must be a JSON object with version and tools")])
    problems: list[tuple[str, str]] = []
    for key in document:
        if key not in ("version", "tools"):
            where = strictjson.json_path((key,))
            problems.append((where, "unknown member; the file has version and tools"))
    version = document.get("version")
    if type(version) is not int or version != 1:  # not true, not 1.0
        problems.append(("$.version", "must be 1"))
    tools = document.get("tools", {})
    if not isinstance(tools, dict):
        raise OverridesError([*problems, ("$.tools", "must be an object: tool name → class")])
    classes = ", ".join(c.value for c in ToolClass)
    risks = ", ".join(r.value for r in Risk)
    out: dict[str, Override] = {}
    for name, entry in tools.items():
        at = strictjson.json_path(("tools", name))
        if not isinstance(entry, dict):
            problems.append((at, 'must be an object such as {"class": "write"}'))
            continue
        for key in entry:
            if key not in ("class", "risk", "reason"):
                where = strictjson.json_path(("tools", name, key))
                problems.append((where, "unknown member; use class, risk, reason"))
        value = entry.get("class")
        if not isinstance(value, str) or value not in {c.value for c in ToolClass}:
            problems.append((f"{at}.class", f"must be one of {classes}"))
            continue
        risk = entry.get("risk")
        if risk is not None and (not isinstance(risk, str) or risk not in {r.value for r in Risk}):
            problems.append((f"{at}.risk", f"must be one of {risks}"))
            continue
        reason = entry.get("reason")
        if reason is not None and not isinstance(reason, str):
            problems.append((f"{at}.reason", "must be a string"))
            continue
        out[name] = Override(ToolClass(value), Risk(risk) if risk else None, reason)
    if problems:
        raise OverridesError(problems)
    return out


_DEFAULT_RISK: Final = {
    ToolClass.READ: Risk.LOW,
    ToolClass.WRITE: Risk.MEDIUM,
    ToolClass.EXECUTE: Risk.HIGH,
    ToolClass.DELETE: Risk.HIGH,
    ToolClass.FINANCIAL: Risk.CRITICAL,
}


def classify_with(
    name: str, element: Mapping[str, Any] | None, overrides: Mapping[str, Override]
) -> Classification:
    """A tool's classification: the operator's override, else its definition (`classify`),
    else unknown (no definition: not pinned, and no override)."""
    override = overrides.get(name)
    if override is not None:
        return Classification(
            name,
            override.tool_class,
            override.risk or _DEFAULT_RISK[override.tool_class],
            override.reason or f"the operator classified it ({OVERRIDES_FILE})",
            "override",
        )
    if element is None:
        return Classification(
            name, None, None, f"not pinned and not in {OVERRIDES_FILE}: class unknown", "unknown"
        )
    return classify(name, element)
