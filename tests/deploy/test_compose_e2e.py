"""deploy/docker-compose.yaml for real: built without a registry, brought up, used through Envoy.

`deploy/docker/offline-images.sh up` builds the local images from Debian packages (cached
across runs), the project's images on them, and brings the compose stack up with its override
and one of this module's (the mounted configuration is a copy of deploy/config, so the
tracked files are never edited; the upstream keeps its execution record in the outputs
volume). The real MCP SDK client then talks to Envoy on the published port.

The tests run in file order on one stack: the demo artist's limit, the limited grant's
denials, a policy edit applied by the running container, the sidecar killed (Envoy fails
closed) and restarted (its counters are still in Redis), and `down -v` leaving nothing.

Where Docker cannot run (not root, no engine), the script exits 77 with one line saying why:
the tests are skipped with that line, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from imagegen_upstream.tools import TOOL_NAMES

from .support import DEPLOY, DOCKER

pytestmark = pytest.mark.e2e

SCRIPT = DOCKER / "offline-images.sh"
CANNOT_RUN_HERE = 77
"""offline-images.sh's exit status when Docker cannot run on this machine."""
ARTIST = "mcp-demo-artist-token"
LIMITED = "mcp-demo-limited-token"
GEMINI = "image.generate.gemini"
RECORD = "/data/outputs/executed.jsonl"
NOT_PASSED = (
    "GOOGLE_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "OPENAI_API_KEY",
    "REPLICATE_API_TOKEN",
    "IMAGEGEN_ALLOWED_HOSTS",
    "COMPOSE_FILE",
    "COMPOSE_PROJECT_NAME",
)
"""Left out of the stack's environment: the upstream uses the offline Gemini endpoint."""

T = TypeVar("T")


@dataclass(frozen=True)
class ComposeStack:
    """The running compose project and how to reach it."""

    project: str
    files: tuple[Path, ...]
    config: Path
    """The copy of deploy/config that the sidecar container has mounted."""
    url: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`docker-compose -p PROJECT -f ... ARGS`; fails the test on a non-zero exit."""
        files = [arg for path in self.files for arg in ("-f", str(path))]
        proc = subprocess.run(
            ["docker-compose", "-p", self.project, *files, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"docker-compose {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc

    def executed(self) -> list[dict[str, Any]]:
        """Every tool execution the upstream container started (its own record)."""
        out = self.compose("exec", "-T", "imagegen", "sh", "-c", f"cat {RECORD} 2>/dev/null || :")
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def runs(self, grant: str) -> int:
        return sum(1 for entry in self.executed() if entry["grant"] == grant)

    def images(self) -> list[str]:
        out = self.compose("exec", "-T", "imagegen", "ls", "/data/outputs")
        return [name for name in out.stdout.split() if name.endswith(".png")]

    def container(self, service: str) -> str:
        (found,) = self.compose("ps", "-q", service).stdout.split()
        return found

    def state(self, service: str) -> str:
        return docker("inspect", "-f", "{{.State.Status}}", self.container(service)).strip()


def docker(*args: str) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def script(
    state: Path, project: str, *args: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "-p", project, "--state-dir", str(state), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


SERVICES = ("envoy", "authz", "imagegen", "gemini", "redis")


def own_tags(project: str) -> dict[str, str]:
    """Image tags of this run's project images, by service: concurrent runs from other
    checkouts on the same engine never use each other's images."""
    sidecar, upstream = f"mcp-authz-sidecar:{project}", f"mcp-authz-imagegen:{project}"
    return {"authz": sidecar, "imagegen": upstream, "gemini": upstream}


def module_override(config: Path, project: str) -> str:
    """This module's compose file: the configuration copy, the upstream's execution record,
    this run's image tags, and the same healthchecks every 2 s instead of 5 or 10 (the start
    order waits on them)."""
    services: dict[str, dict[str, Any]] = {
        name: {"healthcheck": {"interval": "2s"}} for name in SERVICES
    }
    for name, tag in own_tags(project).items():
        services[name]["image"] = tag
    services["authz"]["volumes"] = [f"{config}:/etc/mcp-authz:ro"]
    services["imagegen"]["environment"] = {"IMAGEGEN_RECORD_FILE": RECORD}
    rendered: str = yaml.safe_dump({"services": services})
    return rendered


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    base = tmp_path_factory.mktemp("compose")
    config = base / "config"
    shutil.copytree(DEPLOY / "config", config)
    project = f"mcp-authz-e2e-{os.getpid()}"
    extra = base / "test-override.yaml"
    extra.write_text(module_override(config, project), encoding="utf-8")
    state = base / "state"
    env = {k: v for k, v in os.environ.items() if k not in NOT_PASSED}
    # Published on a port Docker picks: nothing else can take it between the choice and `up`.
    env.update(MCP_AUTHZ_BIND="127.0.0.1", MCP_AUTHZ_PORT="0")
    up = script(state, project, "-f", str(extra), "--timeout", "300", "up", env=env, timeout=3600)
    if up.returncode == CANNOT_RUN_HERE:
        reason = (up.stderr.strip().splitlines() or ["exit 77"])[-1]
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"the compose end-to-end test must run under CI: {reason}")
        pytest.skip(reason)
    files = (DEPLOY / "docker-compose.yaml", state / "docker-compose.offline.yaml", extra)
    stack = ComposeStack(project, files, config, "", env)
    try:
        assert up.returncode == 0, up.stderr[-6000:]
        published = stack.compose("port", "envoy", "10000").stdout.strip()
        yield replace(stack, url=f"http://{published}/mcp")
    finally:
        if up.returncode == 0:
            stack.compose("down", "-v", "--remove-orphans")
            # the tags only: the layers stay, the next run's build cache
            docker("rmi", "--no-prune", *sorted(set(own_tags(project).values())))
        down = script(state, project, "down", env=env, timeout=300)
        assert down.returncode == 0, down.stderr


# -- helpers ----------------------------------------------------------------------------------


async def call(url: str, token: str, *calls: tuple[str, dict[str, Any]]) -> list[CallToolResult]:
    """The tool calls in order, in one MCP session (the real SDK client, handshake era)."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="legacy") as client:
            return [await client.call_tool(name, args) for name, args in calls]


async def listed(url: str, token: str) -> list[str]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode="legacy") as client:
            return sorted(tool.name for tool in (await client.list_tools()).tools)


def text(result: CallToolResult) -> str:
    return "\n".join(part.text for part in result.content if isinstance(part, TextContent))


def draws(*prompts: str) -> list[tuple[str, dict[str, Any]]]:
    return [(GEMINI, {"prompt": prompt}) for prompt in prompts]


def wait_for_fresh_window(seconds: int, needed: float) -> None:
    """Into the next UTC window of `seconds` if less than `needed` seconds of this one are
    left: a limit test must not see its window turn over."""
    left = seconds - time.time() % seconds
    if left < needed:
        time.sleep(left + 0.5)


def poll(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """The first result of `probe` that is not None, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def raw_call(url: str, token: str) -> httpx2.Response:
    """A tools/call POSTed as is: the status Envoy answers with, whatever it is."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": GEMINI, "arguments": {"prompt": "a fox"}},
    }
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-06-18",
    }
    return httpx2.post(url, json=body, headers=headers, timeout=30)


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DOCKER.glob("**/*.Dockerfile")), ids=lambda p: p.name)
def test_no_dockerfile_needs_a_frontend_image(path: Path) -> None:
    """A `# syntax=` parser directive makes BuildKit pull that frontend image (from Docker
    Hub) before the first step: without a registry, every build would fail there."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break  # parser directives come first, before any instruction or blank line
        assert not re.match(r"#\s*syntax\s*=", line, re.IGNORECASE), f"{path.name}: {line}"


# The stack, in this order.


async def test_the_shipped_lock_pins_the_tools_the_container_serves(
    compose_stack: ComposeStack,
) -> None:
    """deploy/config/tools.lock.json is mounted with the rest: under `pinning: enforce` a tool
    whose live definition differed from it would be cut from the listing."""
    assert await listed(compose_stack.url, ARTIST) == sorted(TOOL_NAMES)
    limited = await listed(compose_stack.url, LIMITED)
    assert "image.generate.replicate" not in limited and GEMINI in limited


async def test_the_demo_artist_gets_30_images_a_minute(compose_stack: ComposeStack) -> None:
    wait_for_fresh_window(60, 15)
    results = await call(
        compose_stack.url, ARTIST, *draws(*(f"a cat, take {i}" for i in range(31)))
    )
    assert [text(r) for r in results[:30] if r.is_error] == []
    assert all("provider=google(gemini)" in text(r) for r in results[:30])
    denied = text(results[30])
    assert results[30].is_error and denied.startswith("[POLICY DENIED] "), denied
    assert "/tools/image.generate.gemini/limits/image.generate.gemini_rate" in denied
    # what the upstream container ran, and the PNGs in the outputs volume
    assert compose_stack.runs("demo-artist") == 30
    assert len(compose_stack.images()) == 30


async def test_the_limited_grant_is_denied_readably(compose_stack: ComposeStack) -> None:
    wait_for_fresh_window(60, 15)
    results = await call(
        compose_stack.url,
        LIMITED,
        (GEMINI, {"prompt": "a dog", "returnBase64": True}),
        *draws("a dog", "a dog, again", "a dog, once more", "a fourth dog"),
    )
    base64, allowed, fourth = results[0], results[1:4], results[4]
    assert base64.is_error and text(base64).startswith("[POLICY DENIED] ")
    assert "may not ask for base64 image data" in text(base64)
    assert [text(r) for r in allowed if r.is_error] == []
    assert fourth.is_error and text(fourth).startswith("[POLICY DENIED] ")
    assert "the limited demo grant may generate 3 images a minute" in text(fourth)
    assert compose_stack.runs("demo-limited") == 3


RELOADED = "reloaded in the running container"
DAILY = "the limited demo grant may generate 3 images a day"


async def test_a_policy_edit_applies_in_the_running_container(compose_stack: ComposeStack) -> None:
    """The limited policy is rewritten on the host, in the mounted directory: a prompt rule and a
    day window. The sidecar container polls the directory and applies it without a restart."""
    wait_for_fresh_window(86_400, 600)  # the day limit below must not turn over mid-module
    path = compose_stack.config / "policies" / "imagegen-limited.json"
    policy = json.loads(path.read_text(encoding="utf-8"))
    tool = policy["tools"][GEMINI]
    tool["deny_if"].append(
        {
            "conditions": [{"path": "args.prompt", "op": "regex", "value": "(?i)probe"}],
            "on_deny": RELOADED,
        }
    )
    tool["limits"] = [
        {"counter": "gemini_images", "window": "day", "max": 3, "scope": "grant", "on_deny": DAILY}
    ]
    before = compose_stack.runs("demo-limited")
    path.write_text(json.dumps(policy, indent=2), encoding="utf-8")

    # Probe until the new rule answers. Before that, the old policy judges the probes: denied
    # by its minute limit, or run if a new minute began (counted, to check the record).
    ran_before_the_edit = 0
    deadline = time.monotonic() + 60
    while True:
        (result,) = await call(compose_stack.url, LIMITED, *draws("a probe"))
        if RELOADED in text(result):
            break
        ran_before_the_edit += not result.is_error
        assert time.monotonic() < deadline, f"the edit was not applied: {text(result)}"
        await asyncio.sleep(0.5)
    assert result.is_error and text(result).startswith("[POLICY DENIED] ")

    # the day window is a new counter: three more images, then the new limit's denial
    results = await call(compose_stack.url, LIMITED, *draws("a cow", "a cow", "a cow", "a cow"))
    assert [text(r) for r in results[:3] if r.is_error] == []
    assert results[3].is_error and DAILY in text(results[3])
    assert compose_stack.runs("demo-limited") == before + ran_before_the_edit + 3


def day_counter(compose_stack: ComposeStack) -> dict[str, str]:
    """The limited grant's day bucket in the Redis container: {"w": start, "c": count}."""
    keys = compose_stack.compose(
        "exec", "-T", "redis", "redis-cli", "--scan", "--pattern", "*:b:86400:*gemini_images*"
    ).stdout.split()
    assert len(keys) == 1, keys
    fields = compose_stack.compose("exec", "-T", "redis", "redis-cli", "hgetall", keys[0])
    words = fields.stdout.split()
    return dict(zip(words[::2], words[1::2], strict=True))


async def test_sidecar_killed_fails_closed_and_its_restart_keeps_the_counters(
    compose_stack: ComposeStack,
) -> None:
    counted = day_counter(compose_stack)
    assert counted["c"] == "3"
    runs = compose_stack.executed()

    compose_stack.compose("kill", "authz")
    poll(lambda: compose_stack.state("authz") == "exited" or None, "the sidecar container to exit")
    answer = raw_call(compose_stack.url, LIMITED)
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["error"]["message"].startswith("[POLICY DENIED] the policy sidecar is unavailable")
    assert answer.headers["retry-after"] == "2"
    assert compose_stack.state("authz") == "exited"  # docker did not bring it back by itself

    compose_stack.compose("start", "authz")

    poll(
        lambda: raw_call(compose_stack.url, LIMITED).status_code != 503 or None,
        "Envoy to reach the restarted sidecar",
        timeout=90,
    )
    (result,) = await call(compose_stack.url, LIMITED, *draws("a horse"))
    answer_text = text(result)
    # the restarted sidecar read the grant's count from Redis: still three of three today
    assert answer_text.startswith("[POLICY DENIED] ") and DAILY in answer_text, answer_text
    assert day_counter(compose_stack) == counted
    assert compose_stack.executed() == runs


def test_down_removes_containers_volumes_and_network(compose_stack: ComposeStack) -> None:
    compose_stack.compose("down", "-v", "--remove-orphans")
    label = f"label=com.docker.compose.project={compose_stack.project}"
    assert docker("ps", "-aq", "--filter", label).split() == []
    assert docker("volume", "ls", "-q", "--filter", label).split() == []
    assert docker("network", "ls", "-q", "--filter", label).split() == []
