"""Metric labels stay bounded whatever the client sends."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from authz.config.source import ConfigSource
from authz.metrics import Metrics, rule_kind
from authz.model import Decision, DenyKind, FixedRule
from authz.policy import load_policy

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


@pytest.mark.parametrize(
    ("rule", "kind"),
    [
        (None, "none"),
        ("(auth)", "auth"),
        ("(default deny)", "default_deny"),
        ("(counters fail-open)", "counters_fail_open"),
        ("/tools/t/require/0", "require"),
        ("/tools/t/deny_if/3", "deny_if"),
        ("/tools/t/rules/1", "rules"),
        ("/tools/t/limits/c", "limit"),
        ("/tools/t/limits/c/cost", "limit_cost"),
        ("/tools/a~1b/limits/c~1d", "limit"),
        ("/all_tools/limits/c", "limit"),
        ("/all_tools/limits/c/cost", "limit_cost"),
        ("/methods/default", "methods"),
        ("/methods/deny/0", "methods"),
        ("/resources/docs:~1~1{name}/deny_if/0", "deny_if"),
        ("/resources/file:~1~1~1{+p}/limits/reads", "limit"),
        ("/resources/*/require_approval", "require_approval"),
        ("/resources/docs:~1~1{name}", "ambiguous_uri"),
        ("/prompts/p/require/1", "require"),
        ("/prompts/*/approve_if/0", "approve_if"),
        ("/prompts/p", "other"),
        ("something else", "other"),
    ],
)
def test_rule_kind(rule: str | None, kind: str) -> None:
    assert rule_kind(rule) == kind


def test_rule_kind_of_every_fixed_rule() -> None:
    kinds = {rule: rule_kind(rule) for rule in FixedRule}
    # the in-flight registry's two rules have never had a label of their own
    other = {FixedRule.INFLIGHT, FixedRule.ID_IN_USE}
    assert {rule for rule, kind in kinds.items() if kind == "other"} == other
    assert all(kinds[rule] == rule.name.lower() for rule in FixedRule if rule not in other)
    assert rule_kind(str(FixedRule.NO_POLICY)) == "no_policy"


def test_tool_label_only_for_tools_the_policy_names() -> None:
    metrics = Metrics()
    policy = load_policy({"version": "1", "tools": {"known": {}}}, name="p")
    deny = Decision.deny(DenyKind.POLICY, "x", rule="(default deny)")
    for tool in ("known", "attacker-chosen-1", "attacker-chosen-2"):
        metrics.observe_decision(deny, tool=tool, policy=policy, seconds=0.001)
    text = metrics.render().decode()
    assert 'tool="known"' in text
    assert 'tool="(unlisted)"' in text
    assert "attacker-chosen" not in text


def _samples(text: str) -> dict[str, float]:
    """`name{labels}` → value of every sample line."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_standard_collectors_and_build_info() -> None:
    text = Metrics().render().decode()
    names = {key.partition("{")[0] for key in _samples(text)}
    assert {"process_start_time_seconds", "process_cpu_seconds_total"} <= names
    assert "python_info" in names  # the platform collector
    assert "python_gc_collections_total" in names  # the GC collector
    build = [key for key in _samples(text) if key.startswith("mcp_authz_build_info{")]
    assert len(build) == 1
    assert 'python="' in build[0] and 'version="' in build[0]


def test_no_created_series() -> None:
    metrics = Metrics()
    metrics.observe_decision(Decision.allow(), tool=None, policy=None, seconds=0.001)
    metrics.observe_approval("requested")
    text = metrics.render().decode()
    assert "mcp_authz_decisions_total" in text
    assert "_created" not in text


def test_last_reload_successful_follows_the_directory(tmp_path: Path) -> None:
    shutil.copytree(DEMO_CONFIG, tmp_path / "config")
    root = tmp_path / "config"
    source = ConfigSource.open(root)
    metrics = Metrics(source)

    def successful() -> float:
        return _samples(metrics.render().decode())["mcp_authz_config_last_reload_successful"]

    assert successful() == 1
    grants = root / "grants.json"
    good = grants.read_bytes()
    grants.write_bytes(b"{ not json")
    assert not source.poll()
    assert successful() == 0
    assert "mcp_authz_config_last_reload_failed" not in metrics.render().decode()
    grants.write_bytes(good)
    source.poll()
    assert successful() == 1
