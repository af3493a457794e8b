"""The shared vocabulary: fixed rules render as the documented strings, byte for byte."""

from __future__ import annotations

import json

from authz.model import DenyKind, FixedRule

DOCUMENTED = [
    "(auth)",
    "(path)",
    "(http)",
    "(headers)",
    "(body)",
    "(parse)",
    "(id in use)",
    "(no policy)",
    "(hidden)",
    "(pin)",
    "(default deny)",
    "(counters)",
    "(counters fail-open)",
    "(inflight)",
    "(approvals)",
    "(approval cap)",
    "(approval size)",
    "(error)",
]
"""Every rule a denial names that is not a pointer into a policy (README, audit events)."""


def test_fixed_rules_are_the_documented_strings() -> None:
    assert [rule.value for rule in FixedRule] == DOCUMENTED


def test_a_fixed_rule_renders_as_its_string_everywhere() -> None:
    for rule, text in zip(FixedRule, DOCUMENTED, strict=True):
        assert rule == text and hash(rule) == hash(text)
        assert str(rule) == f"{rule}" == f" (rule: {rule})"[8:-1] == text
        assert json.dumps({"rule": rule}) == json.dumps({"rule": text})


def test_deny_kinds() -> None:
    assert {kind.value for kind in DenyKind} == {
        "unauthenticated",
        "invalid_token",
        "insufficient_scope",
        "not_found",
        "bad_request",
        "policy",
        "rate_limited",
        "unavailable",
        "method_not_allowed",
        "too_large",
        "unsupported_media",
        "approval_required",
    }
