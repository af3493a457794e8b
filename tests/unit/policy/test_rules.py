"""The rules of a tool's entry (authz/policy/rules.py): approve_if and its time to live."""

from __future__ import annotations

import json
from typing import Any

import pytest

from authz.engine import decide
from authz.model import Grant, McpRequest
from authz.policy import PolicyError, load_policy

TOOL = "image.generate.openai"
GRANT = Grant("g1", "G1", "p")


def _request(tool: str = TOOL, **arguments: Any) -> McpRequest:
    return McpRequest("tools/call", 1, False, {"name": tool}, tool, arguments)


def test_approve_if_validates_and_names_the_field() -> None:
    bad = {"version": "1", "tools": {TOOL: {"approve_if": [{"ttl": "soon"}]}}}
    with pytest.raises(PolicyError) as err:
        load_policy(json.dumps(bad), name="p")
    assert "$.tools['image.generate.openai'].approve_if[0].ttl" in str(err.value)
    bad = {"version": "1", "tools": {TOOL: {"approve_if": [{"conditions": {}}]}}}
    with pytest.raises(PolicyError) as err:
        load_policy(json.dumps(bad), name="p")
    assert "approve_if[0].conditions" in str(err.value)
    bad = {"version": "1", "tools": {TOOL: {"require_approval": "yes"}}}
    with pytest.raises(PolicyError) as err:
        load_policy(json.dumps(bad), name="p")
    assert "require_approval" in str(err.value)


@pytest.mark.parametrize(("ttl", "seconds"), [(5, 5), ("90s", 90), ("15m", 900), ("1d", 86400)])
def test_ttl_forms(ttl: object, seconds: int) -> None:
    doc = {"version": "1", "tools": {TOOL: {"approve_if": [{"ttl": ttl}]}}}
    policy = load_policy(json.dumps(doc), name="p")
    decision = decide(policy, GRANT, _request())
    assert decision.approval is not None and decision.approval.ttl_seconds == seconds
