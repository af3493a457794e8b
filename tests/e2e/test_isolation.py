"""One grant's worst-case bodies cannot starve another grant, nor the health probes.

Grant `flood` sends 1 MiB bodies, 12 at a time, without pause, through the real Envoy: the
shapes that cost the most to parse and decide (a flood of tiny values, and the worst that
still fits under the value bound). Meanwhile grant `lister` lists tools with the real MCP
SDK client, and the sidecar's /healthz and /readyz are polled. Every listing must answer,
filtered, with a median under 0.5 s; every probe must answer 200 within a kubelet's default
1 s; nothing `flood` sends may run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from authz.config.grants import hash_token
from authz.devstack.stack import Stack
from authz.mcp import MAX_VALUES
from tests.e2e import corpus
from tests.e2e.conftest import executed, mcp_client

pytestmark = pytest.mark.e2e

OPENAI = corpus.OPENAI
HIDDEN = corpus.REPLICATE
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = 12
LISTINGS = 20

POLICIES = {
    "flood": {
        "version": "1",
        "default": "deny",
        "tools": {OPENAI: {"deny_if": [{"conditions": [], "on_deny": "not for this grant"}]}},
    },
    "lister": {"version": "1", "default": "allow", "hide": [HIDDEN]},
}


def token(grant: str) -> str:
    return f"isolation-{grant}"


def _write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True)
    for name, doc in POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc))
    grants = [
        {"id": gid, "token_sha256": hash_token(token(gid)), "policy": gid} for gid in POLICIES
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return root


@pytest.fixture(scope="module")
def iso_stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("isolation")
    record = base / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=_write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        transport=transport,
    )
    with stack:
        yield stack


def worst_case_bodies() -> dict[str, bytes]:
    """1 MiB tools/call bodies of `OPENAI` (denied for `flood` only after a full parse)."""
    # room for the items once the envelope and a short prompt are in
    bodies = {
        # the flood the bound refuses: ~350,000 empty arrays (0.28 s of the loop before)
        "empty-arrays": corpus.flood_body(OPENAI, b"[]"),
        "empty-objects": corpus.flood_body(OPENAI, b"{}"),
        "nested": corpus.flood_body(OPENAI, b"[" * 60 + b"]" * 60),
        # the worst that fits the bound: as many values as allowed, padded to 1 MiB with
        # escapes the reader must decode (surrogate pairs also make it check every string)
        "bound-arrays": corpus.flood_body(
            OPENAI, b"[]", items=MAX_VALUES // 2 - 20, pad=b"\\ud83d\\ude00"
        ),
        "bound-objects": corpus.flood_body(OPENAI, b"{}", items=MAX_VALUES // 2 - 20, pad=b",,"),
        "bound-numbers": corpus.flood_body(OPENAI, b"0.5", items=MAX_VALUES - 20, pad=b'\\"'),
    }
    for name, body in bodies.items():
        assert MIB - 256 <= len(body) <= MIB, (name, len(body))
    return bodies


async def _flood(url: str, stop: threading.Event, outcomes: Counter[str]) -> None:
    bodies = list(worst_case_bodies().values())
    headers = {
        "Authorization": f"Bearer {token('flood')}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        i = 0
        while not stop.is_set():
            response = await http.post(url, content=bodies[i % len(bodies)])
            i += 1
            if response.status_code == 200:
                text = response.json()["result"]["content"][0]["text"]
                outcomes["denied" if text.startswith("[POLICY DENIED] ") else text] += 1
            elif response.status_code == 400:
                outcomes[f"400 {response.json()['error']['code']}"] += 1
            else:
                outcomes[f"HTTP {response.status_code}"] += 1


def flood_main(url: str) -> None:
    """The flood, in a process of its own (so that its client work does not slow the
    measured client): CONCURRENCY connections posting worst-case bodies until stdin closes;
    prints `started` once every connection had an answer, then the outcomes as JSON."""
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    outcomes: Counter[str] = Counter()

    async def run() -> None:
        workers = [asyncio.create_task(_flood(url, stop, outcomes)) for _ in range(CONCURRENCY)]
        while sum(outcomes.values()) < CONCURRENCY and not stop.is_set():
            await asyncio.sleep(0.05)
        print("started", flush=True)
        await asyncio.gather(*workers)

    asyncio.run(run())
    print(json.dumps(outcomes), flush=True)


async def _probe(admin_url: str, stop: asyncio.Event, seen: list[tuple[str, int, float]]) -> None:
    async with httpx2.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            for path in ("/healthz", "/readyz"):
                started = time.perf_counter()
                try:
                    status = (await http.get(admin_url + path)).status_code
                except httpx2.HTTPError:
                    status = 0
                seen.append((path, status, time.perf_counter() - started))
            await asyncio.sleep(0.1)


async def test_a_flood_of_worst_case_bodies_does_not_starve_another_grant(
    iso_stack: Stack,
) -> None:
    stop = asyncio.Event()
    probes: list[tuple[str, int, float]] = []
    latencies: list[float] = []
    async with mcp_client(iso_stack, token("lister")) as client:
        await client.list_tools()  # the session is open before the flood starts
        flood = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            f"from tests.e2e.test_isolation import flood_main; flood_main({iso_stack.mcp_url!r})",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
        )
        assert flood.stdin is not None and flood.stdout is not None
        prober = asyncio.create_task(_probe(iso_stack.admin_url, stop, probes))
        try:
            assert await asyncio.wait_for(flood.stdout.readline(), 60) == b"started\n"
            await asyncio.sleep(0.5)
            for _ in range(LISTINGS):
                started = time.perf_counter()
                listing = await client.list_tools()
                latencies.append(time.perf_counter() - started)
                names = {tool.name for tool in listing.tools}
                assert OPENAI in names and HIDDEN not in names, names
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            flood.stdin.close()
            out, _ = await asyncio.wait_for(flood.communicate(), 60)
            await prober
    outcomes = Counter(json.loads(out))
    p50 = statistics.median(latencies)
    report = (
        f"lister p50 {p50:.3f} s, max {max(latencies):.3f} s; flood outcomes {dict(outcomes)}; "
        f"probes max {max(s for _, _, s in probes):.3f} s over {len(probes)}"
    )
    print(report)
    # the other grant kept being served, fast
    assert len(latencies) == LISTINGS
    assert p50 < 0.5, report
    # the probes answered all along (a kubelet waits 1 s by default)
    assert probes and all(status == 200 for _, status, _ in probes), report
    assert max(seconds for _, _, seconds in probes) < 1.0, report
    # the flood itself was answered, never by a timeout: refused or denied after a full parse
    assert sum(outcomes.values()) >= CONCURRENCY * 2, report
    assert set(outcomes) <= {"denied", "400 -32600"}, report
    assert outcomes["denied"] and outcomes["400 -32600"], report
    # ground truth: the upstream ran nothing of it
    assert OPENAI not in {e["tool"] for e in executed(iso_stack)}
