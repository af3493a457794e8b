"""The catalog, pure: every tool behind the gateway with its class, risk and why, the rule
its class calls for, and for every grant whether it can call the tool and under which rule.

The tools are the pinned lock's (`source` `lock`) or the upstream's live `tools/list`
elements (`live`), and the tools named only in the operator's `tool-classes.json`. A tool's
class is `classify_with` of the definition listed (the operator's override wins).

Who can call a tool is what the sidecar decides, not what the listing suggests: the
policies judge it with the classes the sidecar holds (the lock's and the overrides', never
a live listing's: `engine.standing`), and then the lock's own say is added, as `decide`
applies it after `hide` and `default`: under `pinning: enforce` a tool the lock lacks or
whose live definition differs from it is denied `(pin)`, and strict arguments deny every
call of a tool without a pinned `inputSchema`.

A **blind spot** is a tool that no policy mentions: no entry of its own, no entry of its
class and not hidden by name, in every policy; only `default` decides its calls.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from authz.catalog.classes import (
    CLASS_ORDER,
    RECOMMENDATIONS,
    Classification,
    Override,
    ToolClass,
    classify_with,
)
from authz.engine import standing
from authz.model import FixedRule, Grant
from authz.pinning.lock import ToolLock, definition_hash
from authz.policy import Policy

__all__ = [
    "Catalog",
    "CatalogTool",
    "GrantAccess",
    "LockState",
    "Source",
    "build_catalog",
    "catalog_document",
]

Source = Literal["lock", "live"]
LockState = Literal["pinned", "changed", "not pinned"]
"""A tool against the configuration's lock: pinned (and, live, listed as pinned); listed
live with another definition; not in the lock."""

_DENIED_BY_LOCK: Final = ("changed", "not pinned")


@dataclass(frozen=True, slots=True)
class GrantAccess:
    """Whether one grant can call a tool: some call of it can be allowed (`callable`), and
    the rule that decides that (an entry's pointer, or a fixed rule such as `(default
    deny)`); `entries` judge its calls; `judged_as` is the class whose entry judges it."""

    grant: str
    policy: str
    callable: bool
    rule: str
    entries: tuple[str, ...] = ()
    judged_as: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogTool:
    """One tool: its classification, the rule its class calls for, whether it is a blind
    spot, its state against the lock (None: no lock), whether the upstream lists it (None:
    not read live), and every grant's access."""

    classification: Classification
    blind_spot: bool
    lock: LockState | None
    offered: bool | None
    grants: tuple[GrantAccess, ...]

    @property
    def name(self) -> str:
        return self.classification.tool

    @property
    def recommendation(self) -> str | None:
        tool_class = self.classification.tool_class
        return RECOMMENDATIONS[tool_class] if tool_class is not None else None


@dataclass(frozen=True, slots=True)
class Catalog:
    source: Source
    tools: tuple[CatalogTool, ...]

    @property
    def blind_spots(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools if tool.blind_spot)

    def by_class(self) -> dict[ToolClass | None, tuple[str, ...]]:
        """The tools of each class present, in `CLASS_ORDER`; None: class unknown."""
        out: dict[ToolClass | None, tuple[str, ...]] = {}
        for tool_class in (*CLASS_ORDER, None):
            names = tuple(t.name for t in self.tools if t.classification.tool_class == tool_class)
            if names:
                out[tool_class] = names
        return out


def build_catalog(
    *,
    grants: Iterable[Grant],
    policies: Mapping[str, Policy],
    judged: Mapping[str, Classification],
    lock: ToolLock | None,
    overrides: Mapping[str, Override],
    live: Sequence[Mapping[str, Any]] | None = None,
) -> Catalog:
    """The catalog of the lock's tools (`live` None) or of the `live` `tools/list`
    elements, plus the tools only `overrides` name, sorted by name.

    `judged` is the class of each tool as the sidecar holds it (`ConfigSet.classes`): the
    policies judge calls with it, whatever the live listing says."""
    listed: dict[str, Mapping[str, Any]]
    if live is None:
        listed = {name: tool.definition for name, tool in (lock.tools if lock else {}).items()}
    else:
        listed = {str(element["name"]): element for element in live}
    grants = tuple(grants)
    tools = []
    for name in sorted({*listed, *overrides}):
        element = listed.get(name)
        state = _lock_state(lock, name, element if live is not None else None)
        access = tuple(_access(grant, policies, judged, lock, name, state) for grant in grants)
        tools.append(
            CatalogTool(
                classification=classify_with(name, element, overrides),
                blind_spot=all(_unmentioned(policy, name, judged) for policy in policies.values()),
                lock=state,
                offered=None if live is None else element is not None,
                grants=access,
            )
        )
    return Catalog("lock" if live is None else "live", tuple(tools))


def _lock_state(
    lock: ToolLock | None, name: str, live: Mapping[str, Any] | None
) -> LockState | None:
    if lock is None:
        return None
    pinned = lock.get(name)
    if pinned is None:
        return "not pinned"
    if live is not None and definition_hash(live) != pinned.sha256:
        return "changed"
    return "pinned"


def _unmentioned(policy: Policy, tool: str, judged: Mapping[str, Classification]) -> bool:
    """Whether only `default` decides the calls of `tool` under `policy`: no entry of its
    own, none of its class, and not hidden (by name or by `"*"`)."""
    return standing(policy, tool, judged).default_only and not policy.is_hidden(tool)


def _access(
    grant: Grant,
    policies: Mapping[str, Policy],
    judged: Mapping[str, Classification],
    lock: ToolLock | None,
    tool: str,
    state: LockState | None,
) -> GrantAccess:
    policy = policies.get(grant.policy)
    if policy is None:
        return GrantAccess(grant.id, grant.policy, False, FixedRule.NO_POLICY.value)
    found = standing(policy, tool, judged)
    denial = _lock_denial(policy, tool, lock, state) if found.callable else None
    return GrantAccess(
        grant.id,
        grant.policy,
        found.callable and denial is None,
        str(denial or found.rule),
        found.entries,
        found.judged_as,
    )


def _lock_denial(
    policy: Policy, tool: str, lock: ToolLock | None, state: LockState | None
) -> str | None:
    """The rule by which the lock denies every call of a tool the policy admits, as
    `decide` applies it (None: it does not)."""
    if state in _DENIED_BY_LOCK and policy.pinning == "enforce":
        return FixedRule.PIN.value
    mode, setting = policy.arguments(tool)
    if mode != "strict":
        return None
    pinned = lock.get(tool) if lock is not None else None
    if pinned is None or pinned.arguments is None:
        return setting  # strict arguments deny the calls they cannot check
    return None


def catalog_document(catalog: Catalog) -> dict[str, Any]:
    """The catalog as JSON (`mcp-authz catalog --json`)."""
    return {
        "source": catalog.source,
        "tools": [
            {
                "name": tool.name,
                "class": _value(tool.classification.tool_class),
                "risk": _value(tool.classification.risk),
                "reason": tool.classification.reason,
                "classified_by": tool.classification.source,
                "recommendation": tool.recommendation,
                "blind_spot": tool.blind_spot,
                "lock": tool.lock,
                "offered": tool.offered,
                "grants": [
                    {
                        "grant": access.grant,
                        "policy": access.policy,
                        "callable": access.callable,
                        "rule": access.rule,
                        "entries": list(access.entries),
                        "judged_as": access.judged_as,
                    }
                    for access in tool.grants
                ],
            }
            for tool in catalog.tools
        ],
        "classes": {
            tool_class.value: {
                "tools": list(catalog.by_class().get(tool_class, ())),
                "recommendation": RECOMMENDATIONS[tool_class],
            }
            for tool_class in CLASS_ORDER
        },
    }


def _value(member: enum.StrEnum | None) -> str | None:
    return None if member is None else member.value
