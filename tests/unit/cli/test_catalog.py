"""`mcp-authz catalog`: the report built from a configuration directory (a lock, the
operator's tool-classes.json, grants of policies that admit, deny, hide or do not mention a
tool, a grant whose policy is not loaded), and the real command as a subprocess: its table,
its JSON, the demo configuration's catalog, the live listing of the drifting test upstream
(tests/e2e/drift_upstream.py, the SDK's `MCPServer`) with a tool added at runtime, and its
error exits.

Who can call a tool is checked against the engine's own decision (`decide`) on a real
`tools/call`, so the catalog cannot claim a grant may call what the sidecar would deny.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from authz.catalog.classes import OVERRIDES_FILE, RECOMMENDATIONS, ToolClass
from authz.cli.catalog import all_grants, render_table
from authz.cli.catalog_report import Catalog, CatalogTool, build_catalog, catalog_document
from authz.config.source import load_config
from authz.devstack.stack import LOOPBACK, free_port
from authz.engine import decide
from authz.mcp import parse_message
from authz.model import Grant, Outcome
from authz.pinning.lock import LOCK_FILE
from imagegen_upstream.tools import TOOL_NAMES
from tests.unit.pinning import lock_bytes, probe_tools

REPO = Path(__file__).resolve().parents[3]
READ, WRITE, DELETE = "probe.read", "probe.write", "probe.delete"
EXPORT = "ledger.export"  # named only in tool-classes.json
NEW = "probe.new"  # added to the live upstream at runtime
TOKEN = "catalog-secret-token-7f3a"

POLICIES: dict[str, dict[str, Any]] = {
    # default allow; names the delete class (denied) and probe.read
    "open": {
        "version": "1",
        "default": "allow",
        "tools": {READ: {}},
        "classes": {"delete": {"deny_if": [{"conditions": []}]}},
    },
    # default deny; probe.read's own entry always denies; hides probe.delete by name
    "closed": {
        "version": "1",
        "default": "deny",
        "hide": [DELETE],
        "tools": {READ: {"deny_if": [{"conditions": []}]}},
    },
}
GRANTS = [
    {"id": "g-open", "token_sha256": "a" * 64, "policy": "open"},
    {"id": "g-closed", "token_sha256": "b" * 64, "policy": "closed"},
    {"id": "g-lost", "token_sha256": "c" * 64, "policy": "gone"},  # no such policy
]
OVERRIDES = {
    "version": 1,
    "tools": {
        WRITE: {"class": "financial", "reason": "it books amounts in the ledger"},
        EXPORT: {"class": "read"},
    },
}


def write_config(
    root: Path,
    policies: dict[str, dict[str, Any]] | None = None,
    *,
    lock: bytes | None = None,
    overrides: dict[str, Any] | None = None,
    grants: list[dict[str, Any]] | None = None,
) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, document in (POLICIES if policies is None else policies).items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(document))
    (root / "grants.json").write_text(
        json.dumps({"version": "1", "grants": GRANTS if grants is None else grants})
    )
    if lock is not None:
        (root / LOCK_FILE).write_bytes(lock)
    if overrides is not None:
        (root / OVERRIDES_FILE).write_text(json.dumps(overrides))
    return root


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A lock of the three probes, tool-classes.json and three grants."""
    return write_config(tmp_path / "config", lock=lock_bytes(probe_tools()), overrides=OVERRIDES)


def catalog_of(root: Path, live: list[dict[str, Any]] | None = None) -> Catalog:
    config = load_config(root)
    return build_catalog(
        grants=all_grants(config.grants),
        policies=config.policies,
        judged=config.classes,
        lock=config.pins,
        overrides=config.overrides,
        live=live,
    )


def tool_of(catalog: Catalog, name: str) -> CatalogTool:
    (found,) = [tool for tool in catalog.tools if tool.name == name]
    return found


def access(tool: CatalogTool) -> dict[str, tuple[bool, str]]:
    return {a.grant: (a.callable, a.rule) for a in tool.grants}


def engine_says(root: Path, grant_id: str, tool: str) -> tuple[Outcome, str | None]:
    """What the sidecar's engine decides for a `tools/call` of `tool` by the grant, with the
    configuration's lock (no drift seen) and classes."""
    from authz.pinning import PinView

    config = load_config(root)
    (grant,) = [g for g in all_grants(config.grants) if g.id == grant_id]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
    request = parse_message(json.dumps(body).encode(), session_id="s-1")
    pins = PinView(config.pins) if config.pins is not None else None
    decision = decide(config.policy(grant.policy), grant, request, pins, config.classes)
    return decision.outcome, decision.rule


# -- the report ----------------------------------------------------------------------------


def test_every_tool_of_the_lock_and_the_overrides_with_its_class_and_why(
    config_dir: Path,
) -> None:
    catalog = catalog_of(config_dir)
    assert catalog.source == "lock"
    assert [t.name for t in catalog.tools] == [EXPORT, DELETE, READ, WRITE]
    shown = {
        t.name: (
            t.classification.tool_class,
            t.classification.risk and t.classification.risk.value,
            t.classification.source,
            t.lock,
        )
        for t in catalog.tools
    }
    assert shown == {
        READ: (ToolClass.READ, "low", "definition", "pinned"),
        WRITE: (ToolClass.FINANCIAL, "critical", "override", "pinned"),  # the override wins
        DELETE: (ToolClass.DELETE, "high", "definition", "pinned"),
        EXPORT: (ToolClass.READ, "low", "override", "not pinned"),
    }
    assert tool_of(catalog, WRITE).classification.reason == "it books amounts in the ledger"
    assert "destructiveHint is true" in tool_of(catalog, DELETE).classification.reason
    assert tool_of(catalog, WRITE).recommendation == RECOMMENDATIONS[ToolClass.FINANCIAL]


def test_which_grant_can_call_which_tool_under_which_rule(config_dir: Path) -> None:
    catalog = catalog_of(config_dir)
    assert access(tool_of(catalog, READ)) == {
        "g-open": (True, f"/tools/{READ}"),
        "g-closed": (False, f"/tools/{READ}/deny_if/0"),
        "g-lost": (False, "(no policy)"),
    }
    assert access(tool_of(catalog, DELETE)) == {
        "g-open": (False, "/classes/delete/deny_if/0"),
        "g-closed": (False, "(hidden)"),
        "g-lost": (False, "(no policy)"),
    }
    assert access(tool_of(catalog, WRITE)) == {
        "g-open": (True, "(default allow)"),  # financial: a class "open" does not name
        "g-closed": (False, "(default deny)"),
        "g-lost": (False, "(no policy)"),
    }
    # not in the lock: pinning (enforce, the default) denies what default allow admits
    assert access(tool_of(catalog, EXPORT))["g-open"] == (False, "(pin)")
    (by_class,) = [a for a in tool_of(catalog, DELETE).grants if a.grant == "g-open"]
    assert by_class.entries == ("/classes/delete",) and by_class.judged_as == "delete"


@pytest.mark.parametrize("tool", [READ, WRITE, DELETE, EXPORT])
@pytest.mark.parametrize("grant", ["g-open", "g-closed", "g-lost"])
def test_the_catalog_agrees_with_the_engine(config_dir: Path, tool: str, grant: str) -> None:
    (shown,) = [a for a in tool_of(catalog_of(config_dir), tool).grants if a.grant == grant]
    outcome, rule = engine_says(config_dir, grant, tool)
    assert shown.callable == (outcome is Outcome.ALLOW)
    if not shown.callable:
        assert shown.rule == rule


def test_blind_spots_are_the_tools_no_policy_mentions(config_dir: Path) -> None:
    catalog = catalog_of(config_dir)
    # probe.read: own entries; probe.delete: open's delete class, closed hides it by name
    assert catalog.blind_spots == (EXPORT, WRITE)
    # an entry of its class in one policy is enough
    with_financial = {
        **POLICIES,
        "open": {
            **POLICIES["open"],
            "classes": {"financial": {"approve_if": [{"conditions": []}]}},
        },
    }
    root = write_config(
        config_dir.parent / "other",
        with_financial,
        lock=lock_bytes(probe_tools()),
        overrides=OVERRIDES,
    )
    assert catalog_of(root).blind_spots == (EXPORT,)  # probe.write is financial


def test_live_tools_judged_as_the_sidecar_judges_them(config_dir: Path) -> None:
    """Live: a tool the lock lacks shows the class of its definition, but the policies judge
    it as the sidecar does, class unknown (open names delete: judged as delete); a tool
    whose definition changed is denied (pin)."""
    live = probe_tools()
    for element in live:
        if element["name"] == READ:
            element["description"] = "Looks something up. Also mails it to a third party."
    live.append(
        {
            "name": NEW,
            "description": "Added at runtime.",
            "inputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": True},
        }
    )
    catalog = catalog_of(config_dir, live)
    assert catalog.source == "live"
    new = tool_of(catalog, NEW)
    assert (new.classification.tool_class, new.classification.source) == (
        ToolClass.READ,
        "definition",
    )
    assert (new.lock, new.offered) == ("not pinned", True)
    (opened,) = [a for a in new.grants if a.grant == "g-open"]
    assert (opened.callable, opened.rule, opened.judged_as) == (
        False,
        "/classes/delete/deny_if/0",
        "delete",
    )
    assert not new.blind_spot  # open's delete entry judges it
    assert tool_of(catalog, READ).lock == "changed"
    assert access(tool_of(catalog, READ))["g-open"] == (False, "(pin)")
    assert tool_of(catalog, EXPORT).offered is False
    assert "judged as delete" in render_table(catalog)


def test_strict_arguments_deny_a_tool_without_a_pinned_schema(tmp_path: Path) -> None:
    policies = {"strict": {"version": "1", "default": "allow", "arguments": "strict"}}
    grants = [{"id": "g", "token_sha256": "a" * 64, "policy": "strict"}]
    root = write_config(tmp_path, policies, overrides=OVERRIDES, grants=grants)  # no lock
    catalog = catalog_of(root)
    assert access(tool_of(catalog, EXPORT)) == {"g": (False, "/arguments")}
    assert engine_says(root, "g", EXPORT) == (Outcome.DENY, "/arguments")


def test_the_json_document(config_dir: Path) -> None:
    document = catalog_document(catalog_of(config_dir))
    assert document["source"] == "lock"
    (write,) = [t for t in document["tools"] if t["name"] == WRITE]
    assert write == {
        "name": WRITE,
        "class": "financial",
        "risk": "critical",
        "reason": "it books amounts in the ledger",
        "classified_by": "override",
        "recommendation": RECOMMENDATIONS[ToolClass.FINANCIAL],
        "blind_spot": True,
        "lock": "pinned",
        "offered": None,
        "grants": [
            {
                "grant": "g-closed",
                "policy": "closed",
                "callable": False,
                "rule": "(default deny)",
                "entries": [],
                "judged_as": None,
            },
            {
                "grant": "g-lost",
                "policy": "gone",
                "callable": False,
                "rule": "(no policy)",
                "entries": [],
                "judged_as": None,
            },
            {
                "grant": "g-open",
                "policy": "open",
                "callable": True,
                "rule": "(default allow)",
                "entries": [],
                "judged_as": None,
            },
        ],
    }
    assert document["classes"] == {
        "read": {"tools": [EXPORT, READ], "recommendation": RECOMMENDATIONS[ToolClass.READ]},
        "write": {"tools": [], "recommendation": RECOMMENDATIONS[ToolClass.WRITE]},
        "execute": {"tools": [], "recommendation": RECOMMENDATIONS[ToolClass.EXECUTE]},
        "delete": {"tools": [DELETE], "recommendation": RECOMMENDATIONS[ToolClass.DELETE]},
        "financial": {"tools": [WRITE], "recommendation": RECOMMENDATIONS[ToolClass.FINANCIAL]},
    }


def test_every_kind_of_grant_is_listed(tmp_path: Path) -> None:
    grants: list[dict[str, Any]] = [
        {"id": "z-token", "token_sha256": "a" * 64, "policy": "open"},
        {"id": "m-mesh", "spiffe_id": "spiffe://example.org/agent", "policy": "open"},
        {"id": "a-jwt", "jwt": {"issuer": "https://idp.example"}, "policy": "open"},
    ]
    root = write_config(tmp_path, overrides=OVERRIDES, grants=grants)
    assert [g.id for g in all_grants(load_config(root).grants)] == ["a-jwt", "m-mesh", "z-token"]
    assert [a.grant for a in tool_of(catalog_of(root), EXPORT).grants] == [
        "a-jwt",
        "m-mesh",
        "z-token",
    ]
    assert isinstance(all_grants(load_config(root).grants)[0], Grant)


# -- the command -----------------------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MCP_AUTHZ_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "mcp-authz"), "catalog", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**clean, **(env or {})},
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


@pytest.mark.processes
def test_the_table(config_dir: Path) -> None:
    lines = ok(cli("--config", str(config_dir))).splitlines()
    assert lines[0].split() == ["TOOL", "CLASS", "RISK", "GRANTS"]
    at = lines.index(next(line for line in lines if line.startswith(DELETE)))
    assert lines[at].split() == [DELETE, "delete", "high", "g-closed", "no", "(hidden)"]
    assert lines[at + 1].split() == ["g-lost", "no", "(no", "policy)"]
    assert lines[at + 2].split() == ["g-open", "no", "/classes/delete/deny_if/0"]
    assert lines[at + 3].startswith("    why: destructiveHint is true")
    write = lines.index(next(line for line in lines if line.startswith(WRITE)))
    assert lines[write].split()[:3] == [WRITE, "financial", "critical"]
    assert "    why: it books amounts in the ledger (from tool-classes.json)" in lines
    notes = lines[write + 3 :]
    assert notes[1].startswith("    BLIND SPOT: no policy has an entry for it or its class")
    assert f"  financial: {RECOMMENDATIONS[ToolClass.FINANCIAL]}" in lines
    assert lines[-1] == (
        "4 tools (tools.lock.json): 2 read, 1 delete, 1 financial; "
        f"blind spots: 2 ({EXPORT}, {WRITE})"
    )


@pytest.mark.processes
def test_the_json_output_and_the_config_from_the_environment(config_dir: Path) -> None:
    printed = json.loads(ok(cli("--json", env={"MCP_AUTHZ_CONFIG": str(config_dir)})))
    assert printed == catalog_document(catalog_of(config_dir))


@pytest.mark.processes
def test_the_demo_catalog() -> None:
    """The demo's four ImageGen tools are Write, medium risk, each with its reason; the demo
    policy's write class entry admits every one for the artist grant."""
    printed = json.loads(ok(cli("--config", str(REPO / "deploy" / "config"), "--json")))
    tools = {t["name"]: t for t in printed["tools"]}
    assert sorted(tools) == sorted(TOOL_NAMES)
    for tool in tools.values():
        assert (tool["class"], tool["risk"], tool["classified_by"]) == (
            "write",
            "medium",
            "definition",
        )
        assert tool["reason"].startswith("readOnlyHint false, destructiveHint false")
        assert not tool["blind_spot"]
        (artist,) = [g for g in tool["grants"] if g["grant"] == "demo-artist"]
        assert artist["callable"]
    assert printed["classes"]["write"]["tools"] == sorted(TOOL_NAMES)
    table = ok(cli("--config", str(REPO / "deploy" / "config")))
    assert table.splitlines()[-1] == "4 tools (tools.lock.json): 4 write; blind spots: none"
    # the README shows this very output
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    shown = readme.split("$ mcp-authz catalog --config deploy/config\n", 1)[1].split("```", 1)[0]
    assert shown == table


@pytest.mark.processes
def test_error_exits(tmp_path: Path, config_dir: Path) -> None:
    missing = cli()
    assert missing.returncode == 2
    assert "--config: a configuration directory is required" in missing.stderr

    gone = cli("--config", str(tmp_path / "nowhere"))
    assert gone.returncode == 2 and "invalid configuration" in gone.stderr
    assert "grants.json: file not found" in gone.stderr

    broken = write_config(tmp_path / "broken", {"bad": {"version": "1", "default": "maybe"}})
    refused = cli("--config", str(broken))
    assert refused.returncode == 2 and "bad.json" in refused.stderr

    empty = write_config(tmp_path / "empty")  # no lock, no tool-classes.json
    nothing = cli("--config", str(empty))
    assert nothing.returncode == 2
    assert "no tools to list" in nothing.stderr and "--url" in nothing.stderr

    url = f"http://{LOOPBACK}:{free_port()}/mcp"  # nobody listens
    unreachable = cli("--config", str(config_dir), "--url", url, "-H", f"Authorization: {TOKEN}")
    assert unreachable.returncode == 2 and "cannot connect" in unreachable.stderr
    assert TOKEN not in unreachable.stderr + unreachable.stdout

    header = cli("--config", str(config_dir), "-H", f"Authorization: {TOKEN}")
    assert header.returncode == 2 and "only with --url" in header.stderr

    bad = cli("--config", str(config_dir), "--url", "ftp://host/mcp")
    assert bad.returncode == 2 and "http(s)://" in bad.stderr
    for done in (missing, gone, refused, nothing, unreachable, header, bad):
        assert done.stdout == "" and "Traceback" not in done.stderr


# -- live, from the drifting test upstream -----------------------------------------------------


@dataclass
class Upstream:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/mcp"

    def admin(self, change: dict[str, Any]) -> None:
        answer = httpx.post(f"http://{LOOPBACK}:{self.port}/admin/tools", json=change, timeout=10)
        assert answer.status_code == 200, answer.text


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """tests/e2e/drift_upstream.py as a process of this test's own (it gains a tool)."""
    port = free_port()
    log = tmp_path / "upstream.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.e2e.drift_upstream", "--port", str(port)),
                *("--record", str(tmp_path / "record.jsonl")),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "IMAGEGEN_OUTPUTS": str(tmp_path)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no listener on {port}"
                time.sleep(0.05)
        yield Upstream(port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.processes
def test_live_a_tool_added_at_runtime_is_classified_and_a_blind_spot(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The lock is pinned from the live server by `mcp-authz pin`; then the server gains a
    read-only tool. `catalog --url` lists it with the class of its live definition, not
    pinned, and a blind spot where no policy has a class entry; a policy with a class
    entry judges it (class unknown to the sidecar: judged as the most restrictive class
    it names), and it is no blind spot there."""
    plain = {"plain": {"version": "1", "default": "allow", "tools": {READ: {}, WRITE: {}}}}
    grants = [{"id": "g", "token_sha256": "a" * 64, "policy": "plain"}]
    root = write_config(tmp_path / "plain", plain, grants=grants)
    pinned = subprocess.run(
        [
            *(str(Path(sys.executable).parent / "mcp-authz"), "pin", "--url", upstream.url),
            *("--config", str(root)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pinned.returncode == 0, pinned.stderr
    upstream.admin({"add": NEW, "annotations": {"readOnlyHint": True, "openWorldHint": False}})

    done = cli("--config", str(root), "--url", upstream.url, "-H", f"Authorization: {TOKEN}")
    printed = ok(cli("--config", str(root), "--url", upstream.url, "--json", "--mode", "legacy"))
    tools = {t["name"]: t for t in json.loads(printed)["tools"]}
    assert sorted(tools) == sorted([READ, WRITE, DELETE, NEW])
    new = tools[NEW]
    assert (new["class"], new["risk"], new["classified_by"]) == ("read", "low", "definition")
    assert (new["lock"], new["offered"], new["blind_spot"]) == ("not pinned", True, True)
    assert new["grants"] == [
        {
            "grant": "g",
            "policy": "plain",
            "callable": False,
            "rule": "(pin)",
            "entries": [],
            "judged_as": None,
        }
    ]
    assert tools[DELETE]["blind_spot"] and not tools[READ]["blind_spot"]
    assert tools[DELETE]["lock"] == "pinned"
    table = ok(done)
    assert TOKEN not in table
    assert any(line.split()[:3] == [NEW, "read", "low"] for line in table.splitlines())
    assert table.splitlines()[-1] == (
        f"4 tools (the upstream, live): 2 read, 1 write, 1 delete; blind spots: 2 ({DELETE}, {NEW})"
    )

    classy = {"classy": {"version": "1", "default": "allow", "classes": {"read": {}, "delete": {}}}}
    root = write_config(tmp_path / "classy", classy, grants=[{**grants[0], "policy": "classy"}])
    printed = ok(cli("--config", str(root), "--url", upstream.url, "--json"))
    (new,) = [t for t in json.loads(printed)["tools"] if t["name"] == NEW]
    assert (new["class"], new["lock"], new["blind_spot"]) == ("read", None, False)
    assert new["grants"][0] == {
        "grant": "g",
        "policy": "classy",
        "callable": True,
        "rule": "/classes/delete",
        "entries": ["/classes/delete"],
        "judged_as": "delete",
    }
