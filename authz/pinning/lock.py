"""The tool lock, pure: what the upstream's tools were when an operator pinned them.

`tools.lock.json` in the configuration directory, written by `mcp-authz pin`::

    {"version": 1,
     "pinned_at": "2026-12-02T16:30:00Z",   (when it was pinned; optional)
     "tools": [{"name": "image.generate.gemini",
                "sha256": "<hex>",
                "description": "...",
                "inputSchema": {...},
                "outputSchema": {...},      (when the tool has one)
                "annotations": {...}},      (when the tool has them)
               ...]}

A tool's `sha256` is its **definition hash**: sha256 over the canonical JSON of the
members `description`, `inputSchema`, `outputSchema` and `annotations` of its `tools/list`
element (those present and not null), with sorted keys, no whitespace, UTF-8 and no
escaping of non-ASCII characters (`definition_hash`). The lock keeps the members
themselves too, so a drift can be shown as a diff and `inputSchema` checked against
(`authz.pinning.arguments`). The loaded lock (`ToolLock`) is immutable; its schemas are
compiled once per load.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from authz import strictjson
from authz.pinning.arguments import ArgumentSchema, SchemaProblem, compile_schema
from authz.strictjson import json_path

__all__ = [
    "DEFINITION_MEMBERS",
    "LOCK_FILE",
    "LOCK_VERSION",
    "LockError",
    "PinnedTool",
    "ToolLock",
    "definition",
    "definition_hash",
    "drift_report",
    "load_lock",
    "lock_document",
    "render_lock",
]

LOCK_FILE: Final = "tools.lock.json"
LOCK_VERSION: Final = 1
DEFINITION_MEMBERS: Final = ("description", "inputSchema", "outputSchema", "annotations")
"""The members of a `tools/list` element its definition hash covers."""


class LockError(ValueError):
    """The lock file cannot be used; `problems` are (JSON path, message) pairs."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{where}: {message}" for where, message in self.problems))


def definition(element: Mapping[str, Any]) -> dict[str, Any]:
    """The members of a `tools/list` element the definition hash covers."""
    return {k: element[k] for k in DEFINITION_MEMBERS if element.get(k) is not None}


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 without escaping non-ASCII."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def definition_hash(element: Mapping[str, Any]) -> str:
    """The sha256 (hex) of a tool's definition (`definition`) as canonical JSON."""
    return hashlib.sha256(canonical(definition(element))).hexdigest()


@dataclass(frozen=True, slots=True)
class PinnedTool:
    """One tool as pinned: its name, definition hash and definition."""

    name: str
    sha256: str
    definition: Mapping[str, Any]
    arguments: ArgumentSchema | None = field(default=None, compare=False)
    """Its compiled `inputSchema` (None when it has none: strict arguments deny it)."""

    @property
    def short(self) -> str:
        return self.sha256[:12]


@dataclass(frozen=True, slots=True)
class ToolLock:
    """The loaded lock: pinned tools by name, and the sha256 of the file's bytes."""

    tools: Mapping[str, PinnedTool]
    content_hash: str = ""

    def __len__(self) -> int:
        return len(self.tools)

    def get(self, name: str) -> PinnedTool | None:
        return self.tools.get(name)


def lock_document(
    elements: Iterable[Mapping[str, Any]], *, pinned_at: str | None = None
) -> dict[str, Any]:
    """The lock for `tools/list` elements (sorted by name), as a JSON object. `pinned_at`
    (an RFC 3339 time) records when an operator pinned them: a new pin of unchanged tools
    is still a new file, so the sidecar reloads it and forgets the drift it saw."""
    tools = []
    for element in sorted(elements, key=lambda e: str(e.get("name"))):
        entry: dict[str, Any] = {"name": element["name"], "sha256": definition_hash(element)}
        entry.update(definition(element))
        tools.append(entry)
    document: dict[str, Any] = {"version": LOCK_VERSION, "tools": tools}
    if pinned_at is not None:
        document["pinned_at"] = pinned_at
    return document


def render_lock(document: Mapping[str, Any]) -> str:
    """The lock as the file holds it: indented, sorted keys, a final newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def load_lock(raw: bytes) -> ToolLock:
    """Read and validate a lock file; `LockError` lists every problem, each with its path."""
    try:
        document = strictjson.loads(raw)
    except strictjson.StrictJsonError as exc:
        raise LockError([(json_path(loc), message) for loc, message in exc.problems]) from None
    problems: list[tuple[str, str]] = []
    if not isinstance(document, dict):
        raise LockError([("$", "a tool lock must be a JSON object")])
    for key in document:
        if key not in ("version", "tools", "pinned_at"):
            problems.append(
                (json_path((key,)), "unknown member; a lock has version, tools and pinned_at")
            )
    if "pinned_at" in document and not isinstance(document["pinned_at"], str):
        problems.append(("$.pinned_at", "must be a time (a string), as mcp-authz pin writes it"))
    version = document.get("version")
    if type(version) is not int or version != LOCK_VERSION:  # neither true nor 1.0
        problems.append(("$.version", f"must be {LOCK_VERSION}"))
    elements = document.get("tools")
    if not isinstance(elements, list):
        problems.append(("$.tools", "must be a list of pinned tools"))
        raise LockError(problems)
    tools: dict[str, PinnedTool] = {}
    for i, element in enumerate(elements):
        pinned = _pinned(i, element, problems)
        if pinned is None:
            continue
        if pinned.name in tools:
            problems.append((json_path(("tools", i, "name")), f"{pinned.name!r} is pinned twice"))
            continue
        tools[pinned.name] = pinned
    if problems:
        raise LockError(problems)
    return ToolLock(tools, hashlib.sha256(raw).hexdigest())


def _pinned(i: int, element: Any, problems: list[tuple[str, str]]) -> PinnedTool | None:
    at = ("tools", i)
    if not isinstance(element, dict):
        problems.append((json_path(at), "must be an object with name, sha256 and the definition"))
        return None
    start = len(problems)
    for key in element:
        if key not in ("name", "sha256", *DEFINITION_MEMBERS):
            problems.append(
                (
                    json_path((*at, key)),
                    "unknown member; a pinned tool has name, sha256, "
                    + ", ".join(DEFINITION_MEMBERS),
                )
            )
    name = element.get("name")
    if not isinstance(name, str) or not name:
        problems.append((json_path((*at, "name")), "must be the tool's name (a string)"))
    sha = element.get("sha256")
    expected = definition_hash(element)
    if not isinstance(sha, str):
        problems.append((json_path((*at, "sha256")), "must be the definition's sha256 (hex)"))
    elif sha != expected:
        problems.append(
            (
                json_path((*at, "sha256")),
                f"does not match the definition it pins (its sha256 is {expected}); the lock "
                "was edited by hand: pin again with `mcp-authz pin`",
            )
        )
    for key, kind in (
        ("description", str),
        ("inputSchema", dict),
        ("outputSchema", dict),
        ("annotations", dict),
    ):
        if key in element and element[key] is not None and not isinstance(element[key], kind):
            problems.append(
                (json_path((*at, key)), f"must be a {'string' if kind is str else 'JSON object'}")
            )
    arguments: ArgumentSchema | None = None
    schema = element.get("inputSchema")
    if isinstance(schema, dict):
        try:
            arguments = compile_schema(schema)
        except SchemaProblem as exc:
            problems.append((json_path((*at, "inputSchema", *exc.location)), exc.message))
    if len(problems) > start:
        return None
    assert isinstance(name, str) and isinstance(sha, str)
    return PinnedTool(name, sha, definition(element), arguments)


# -- drift, for people -----------------------------------------------------------------


def drift_report(lock: ToolLock, elements: Iterable[Mapping[str, Any]]) -> list[str]:
    """Lines that say how the upstream's tools differ from the lock (empty: no drift):
    tools added, tools removed, and for each changed tool a unified diff of its definition.
    """
    live: dict[str, Mapping[str, Any]] = {}
    for element in elements:
        name = element.get("name")
        if isinstance(name, str):
            live[name] = element
    out: list[str] = []
    for name in sorted(set(live) - set(lock.tools)):
        out.append(
            f"+ {name}: offered by the upstream, not pinned (sha256 {definition_hash(live[name])})"
        )
    for name in sorted(set(lock.tools) - set(live)):
        out.append(f"- {name}: pinned (sha256 {lock.tools[name].sha256}), no longer offered")
    for name in sorted(set(live) & set(lock.tools)):
        pinned = lock.tools[name]
        now = definition_hash(live[name])
        if now == pinned.sha256:
            continue
        out.append(f"~ {name}: definition changed (sha256 {pinned.sha256} -> {now})")
        before = json.dumps(pinned.definition, indent=2, sort_keys=True, ensure_ascii=False)
        after = json.dumps(definition(live[name]), indent=2, sort_keys=True, ensure_ascii=False)
        diff = difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            fromfile=f"{name} (pinned)",
            tofile=f"{name} (upstream)",
            lineterm="",
        )
        out.extend("    " + line for line in diff)
    return out
