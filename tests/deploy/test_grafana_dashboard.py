"""deploy/grafana/mcp-authz-dashboard.json names only metrics the sidecar exposes.

The exposed names are read from a real `Metrics` registry (the one `/metrics` renders) with
a configuration loaded, so every family the sidecar registers is there, observed or not.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from authz.config.source import ConfigSource
from authz.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "mcp-authz-dashboard.json"

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "offset", "bool", "inf", "nan"}
)  # fmt: skip


def exposed_series_names(tmp_path: Path) -> set[str]:
    shutil.copytree(ROOT / "deploy" / "config", tmp_path / "config")
    text = Metrics(ConfigSource.open(tmp_path / "config")).render().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression of the dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            promql = key in ("expr", "definition") or (key == "query" and "(" in str(value))
            if promql and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords,
    label names (in braces, `by (...)`, `without (...)`, `label_values(_, label)`) or parts
    of strings, durations and variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)
    text = re.sub(r"label_values\(\s*([a-zA-Z_:][\w:]*)\s*,[^)]*\)", r"\1", text)
    text = re.sub(r"\$\w+", "", text)  # dashboard variables
    text = re.sub(r"(?<![\w:])\d[\w.]*", "", text)  # numbers and durations (5m)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][\w:]*", text):
        name = match.group()
        following = text[match.end() :].lstrip()
        if following.startswith("(") or name in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_names_of_an_expression() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, store) (rate(a_bucket{instance=~"$i", x!="y"}'
        "[$__rate_interval]))) / on (store) b_total offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert metric_names("label_values(mcp_authz_build_info, instance)") == {"mcp_authz_build_info"}


def test_every_dashboard_query_names_an_exposed_metric(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_series_names(tmp_path)
    queries = list(expressions(dashboard))
    assert len(queries) >= 20
    used: set[str] = set()
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exposed, f"{sorted(names - exposed)} in {expr!r} are not exposed"
        used |= names
    # the dashboard covers the sidecar's own families, not just the standard ones
    own = {name for name in exposed if name.startswith("mcp_authz_")}
    assert len(used & own) >= 12


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mcp-authz"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
