"""Prometheus metrics, served as `GET /metrics` on the admin port.

Labels are bounded: `tool` is a tool the grant's policy names (or `(unlisted)` / empty; empty
for every request that is not a `tools/call`, resources and prompts included), and
`rule_kind` folds rule pointers (of tools, resources and prompts alike) into a fixed set, so
no client input, no URI and no prompt name, can create series.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterator, Mapping

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from authz.audit import log_writer
from authz.config.source import ConfigSource
from authz.model import Decision, FixedRule
from authz.policy import Policy

__all__ = [
    "APPROVAL_ACTIONS",
    "CONTENT_TYPE",
    "WEBHOOK_RESULTS",
    "Metrics",
    "build_version",
    "rule_kind",
]


CONTENT_TYPE = CONTENT_TYPE_LATEST

disable_created_metrics()  # type: ignore[no-untyped-call]
"""No `*_created` series: a counter's start time is `process_start_time_seconds`, and the
extra series doubled what every counter and histogram costs to scrape and store."""

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

_FIXED_RULES: Mapping[str, str] = {
    FixedRule.AUTH: "auth",
    FixedRule.PARSE: "parse",
    FixedRule.HEADERS: "headers",
    FixedRule.BODY: "body",
    FixedRule.HTTP: "http",
    FixedRule.PATH: "path",
    FixedRule.NO_POLICY: "no_policy",
    FixedRule.HIDDEN: "hidden",
    FixedRule.DEFAULT_DENY: "default_deny",
    FixedRule.PIN: "pin",
    FixedRule.COUNTERS: "counters",
    FixedRule.COUNTERS_FAIL_OPEN: "counters_fail_open",
    FixedRule.APPROVALS: "approvals",
    FixedRule.APPROVAL_CAP: "approval_cap",
    FixedRule.APPROVAL_SIZE: "approval_size",
    FixedRule.ERROR: "error",
}
"""`rule_kind` of the fixed rules; the others (`(inflight)`, `(id in use)`) count as
`other`."""


_CHILD_CACHE_MAX = 4096
"""Label children of `decisions` kept for reuse (a bound, should tool names ever churn)."""

APPROVAL_ACTIONS = frozenset(
    {
        "requested",
        "held",
        "refused",
        "approved",
        "denied",
        "used",
        "expired",
        "stale",
        "unavailable",
    }
)
"""Values of `mcp_authz_approvals_total{action}`; anything else is counted as `other`."""

WEBHOOK_RESULTS = frozenset({"sent", "failed", "dropped"})


def rule_kind(rule: str | None) -> str:
    """Fold a rule pointer into a bounded label value."""
    if rule is None:
        return "none"
    if rule in _FIXED_RULES:
        return _FIXED_RULES[rule]
    parts = rule.split("/")
    if rule.startswith("/methods/"):
        return "methods"
    if rule == "/arguments":
        return "arguments"
    if rule.startswith("/all_tools/limits/"):
        return "limit_cost" if rule.endswith("/cost") and len(parts) > 4 else "limit"
    if rule.startswith(("/tools/", "/resources/", "/prompts/")) and len(parts) >= 4:
        section = parts[3]
        if section == "limits":
            return "limit_cost" if len(parts) > 5 and parts[-1] == "cost" else "limit"
        if section in (
            "require",
            "deny_if",
            "rules",
            "approve_if",
            "require_approval",
            "arguments",
        ):
            return section
    if rule.startswith("/resources/") and len(parts) == 3:
        return "ambiguous_uri"  # a URI the server could read otherwise than the pattern
    return "other"


class _ConfigCollector(Collector):
    """Reload counts and the loaded policy hashes, read from the ConfigSource at scrape."""

    def __init__(self, source: ConfigSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        status = self._source.status
        reloads = CounterMetricFamily(
            "mcp_authz_policy_reloads",
            "Configuration changes seen, by result (applied, rejected).",
            labels=["result"],
        )
        reloads.add_metric(["applied"], status.reloads)
        reloads.add_metric(["rejected"], status.failures)
        yield reloads
        current = self._source.current
        info = GaugeMetricFamily(
            "mcp_authz_policy_info",
            "The loaded policies: 1 per policy name and content hash (sha256).",
            labels=["policy", "sha256"],
        )
        for name, policy in sorted(current.policies.items()):
            info.add_metric([name, policy.content_hash], 1)
        yield info
        config = GaugeMetricFamily(
            "mcp_authz_config_info",
            "The loaded configuration set (grants + policies): 1 for its fingerprint.",
            labels=["fingerprint"],
        )
        config.add_metric([current.fingerprint], 1)
        yield config
        applied = GaugeMetricFamily(
            "mcp_authz_config_last_reload_successful",
            "1 when the last change to the configuration directory was applied (or none was "
            "seen since start), 0 while it is rejected and the last good set is kept.",
        )
        applied.add_metric([], 0 if status.last_error else 1)
        yield applied
        pinned = GaugeMetricFamily(
            "mcp_authz_pinned_tools",
            "Tools in the loaded tool lock (tools.lock.json); absent without a lock.",
        )
        if current.pins is not None:
            pinned.add_metric([], len(current.pins))
        yield pinned


class _LogCollector(Collector):
    """The log writer's own counts (`authz.audit.LineWriter`), read at scrape."""

    def collect(self) -> Iterator[Metric]:
        writer = log_writer()
        full = CounterMetricFamily(
            "mcp_authz_log_queue_full",
            "Times the log queue was full (the event loop had not turned for that many lines) "
            "and was written at once by the line that found it full; no line is dropped.",
        )
        full.add_metric([], writer.full if writer is not None else 0)
        yield full
        lost = CounterMetricFamily(
            "mcp_authz_log_lines_lost",
            "Log lines (audit events included) the log stream refused to take.",
        )
        lost.add_metric([], writer.lost if writer is not None else 0)
        yield lost


def build_version() -> str:
    """The installed distribution's version of the `authz` package ("unknown" from a tree
    that was never installed)."""
    try:
        names = importlib.metadata.packages_distributions().get("authz", [])
        return importlib.metadata.version(names[0]) if names else "unknown"
    except (importlib.metadata.PackageNotFoundError, OSError):
        return "unknown"


class Metrics:
    """Every metric of one sidecar process, in its own registry: the sidecar's own, and the
    standard process, platform and garbage-collector collectors of `prometheus_client`."""

    def __init__(self, config: ConfigSource | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)
        build = Info("mcp_authz_build", "The sidecar's version and Python.", registry=r)
        build.info({"version": build_version(), "python": platform.python_version()})
        if config is not None:
            r.register(_ConfigCollector(config))
        r.register(_LogCollector())
        self.decisions = Counter(
            "mcp_authz_decisions",
            "Decisions by outcome, deny kind, rule kind and tool.",
            ["outcome", "kind", "rule_kind", "tool"],
            registry=r,
        )
        self.check_seconds = Histogram(
            "mcp_authz_check_duration_seconds",
            "Time to decide one ext_authz check, inside the sidecar.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "mcp_authz_counter_store_duration_seconds",
            "Time of one counter-store reservation.",
            ["store"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "mcp_authz_counter_store_errors",
            "Counter-store operations that failed (the call failed closed or open).",
            ["store"],
            registry=r,
        )
        self.store_up = Gauge(
            "mcp_authz_counter_store_up",
            "1 when the counter store answered its last health probe.",
            registry=r,
        )
        self.store_up.set(1)
        self._decision_children: dict[tuple[str, str, str, str], Counter] = {}
        self.approvals = Counter(
            "mcp_authz_approvals",
            "Approval steps of held tool calls (requested, held, approved, denied, used, ...).",
            ["action"],
            registry=r,
        )
        self.approval_webhooks = Counter(
            "mcp_authz_approval_webhooks",
            "Approval webhook deliveries by result (sent, failed after retries, dropped).",
            ["result"],
            registry=r,
        )

        self.definition_changes = Counter(
            "mcp_authz_tool_definition_changed",
            "Distinct tool definitions listed by the upstream that differ from the tool lock "
            "(change: changed, unpinned), by the listing grant's pinning mode.",
            ["change", "pinning"],
            registry=r,
        )

    def observe_approval(self, action: str) -> None:
        """Count one approval step; `action` is folded into a bounded set of labels."""
        self.approvals.labels(action=action if action in APPROVAL_ACTIONS else "other").inc()

    def observe_webhook(self, result: str) -> None:
        self.approval_webhooks.labels(result=result if result in WEBHOOK_RESULTS else "other").inc()

    def observe_decision(
        self, decision: Decision, *, tool: str | None, policy: Policy | None, seconds: float
    ) -> None:
        if tool is None:
            tool_label = ""
        elif policy is not None and policy.tool(tool) is not None:
            tool_label = tool
        else:
            tool_label = "(unlisted)"
        key = (
            decision.outcome.value,
            decision.kind.value if decision.kind else "",
            rule_kind(decision.rule),
            tool_label,
        )
        child = self._decision_children.get(key)
        if child is None:
            # labels() resolves and locks on every call; the children are cached here
            # (bounded: the label values are a fixed set, tools are the policies' names)
            child = self.decisions.labels(*key)
            if len(self._decision_children) < _CHILD_CACHE_MAX:
                self._decision_children[key] = child
        child.inc()
        self.check_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
