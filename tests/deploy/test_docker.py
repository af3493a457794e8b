"""deploy/docker: Dockerfiles, pinned dependencies, the health probe and the upstream entrypoint.

No Docker engine is needed: the Dockerfiles are checked as text (pinned base image, non-root
USER, HEALTHCHECK, constraints, every COPY source inside the build context), and the two
scripts the images run are exercised for real: healthcheck.py against a running sidecar and
HTTP endpoints, imagegen-entrypoint.sh with `sh`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import pytest

from authz.envoy.http_authz import HEALTH_PATH

from .support import DEPLOY, DOCKER, REPO, free_port

SIDECAR = DOCKER / "sidecar.Dockerfile"
UPSTREAM = DOCKER / "upstream.Dockerfile"
DOCKERFILES = [SIDECAR, UPSTREAM]
HEALTHCHECK = DOCKER / "healthcheck.py"
ENTRYPOINT = DOCKER / "imagegen-entrypoint.sh"
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"


def load_script(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


# -- Dockerfiles ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} must be exec form: {self.args}"
        return [str(v) for v in value]


def instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage = FROM count."""
    out: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, " ".join(args.split()), stage))
    assert not pending, f"{path}: dangling line continuation"
    return out


def final_stage(path: Path) -> list[Instruction]:
    steps = instructions(path)
    last = max(step.stage for step in steps)
    return [step for step in steps if step.stage == last]


def arg_default(path: Path, name: str) -> str:
    (step,) = [
        s for s in instructions(path) if s.keyword == "ARG" and s.args.startswith(name + "=")
    ]
    return step.args.split("=", 1)[1]


def env_values(steps: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for step in steps:
        if step.keyword == "ENV":
            for item in step.args.split():
                key, _, value = item.partition("=")
                values[key] = value
    return values


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned_python_311_slim(path: Path) -> None:
    image = arg_default(path, "PYTHON_IMAGE")
    match = re.fullmatch(r"python:(3\.11\.\d+)-slim@sha256:[0-9a-f]{64}", image)
    assert match, f"{path.name}: base image must be python:3.11.X-slim@sha256:<digest>: {image}"
    constraints = load_script(DOCKER / "constraints.py", "docker_constraints")
    assert match.group(1) == constraints.IMAGE_PYTHON, "constraints.py evaluates markers for it"
    froms = [s.args for s in instructions(path) if s.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_both_images_share_the_base_and_the_build() -> None:
    """One project install; only the upstream adds the imagegen extra (the sidecar's image
    carries no MCP SDK, google-genai or pillow)."""
    assert arg_default(SIDECAR, "PYTHON_IMAGE") == arg_default(UPSTREAM, "PYTHON_IMAGE")
    sidecar, upstream = [[s for s in instructions(p) if s.stage == 0] for p in DOCKERFILES]
    install = " --only-binary=:all: /src "
    (run,) = [s.args for s in sidecar if s.keyword == "RUN"]
    assert install in run, "the sidecar installs the project without extras"
    as_upstream = [
        replace(s, args=s.args.replace(install, " --only-binary=:all: '/src[imagegen]' "))
        for s in sidecar
    ]
    assert as_upstream == upstream, "the build stages differ only in the upstream's extra"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dependencies_are_installed_from_the_constraints(path: Path) -> None:
    build = [s for s in instructions(path) if s.stage == 0]
    env = env_values(build)
    constraint = env["PIP_CONSTRAINT"]
    copies = [s.args.split() for s in build if s.keyword == "COPY"]
    workdir = next(s.args for s in build if s.keyword == "WORKDIR")
    assert ["deploy/docker/constraints.txt", "deploy/docker/constraints.txt"] in copies
    assert constraint == f"{workdir}/deploy/docker/constraints.txt"
    (run,) = [s.args for s in build if s.keyword == "RUN"]
    assert "pip install --only-binary=:all:" in run
    assert "pip check" in run


def test_constraints_pin_every_runtime_dependency() -> None:
    constraints = load_script(DOCKER / "constraints.py", "docker_constraints")
    problems = constraints.problems((DOCKER / "constraints.txt").read_text(encoding="utf-8"))
    assert problems == [], "\n".join(problems)


def test_constraints_check_catches_a_missing_pin() -> None:
    constraints = load_script(DOCKER / "constraints.py", "docker_constraints")
    text = (DOCKER / "constraints.txt").read_text(encoding="utf-8")
    without_grpcio = "\n".join(
        line for line in text.splitlines() if not line.startswith("grpcio==")
    )
    assert any("grpcio" in p for p in constraints.problems(without_grpcio))
    assert constraints.problems(text.replace("pydantic==", "pydantic>=")) != []
    # the upstream image's imagegen extra is pinned too, though the sidecar does not need it
    without_genai = "\n".join(
        line for line in text.splitlines() if not line.startswith("google-genai==")
    )
    assert any("google-genai" in p for p in constraints.problems(without_genai))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_numeric_non_root_user(path: Path) -> None:
    users = [s.args for s in final_stage(path) if s.keyword == "USER"]
    assert users == ["10001:10001"]
    steps = final_stage(path)
    user_at = next(i for i, s in enumerate(steps) if s.keyword == "USER")
    entry_at = next(i for i, s in enumerate(steps) if s.keyword == "ENTRYPOINT")
    assert user_at < entry_at


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_healthcheck_runs_the_copied_probe(path: Path) -> None:
    steps = final_stage(path)
    (health,) = [s for s in steps if s.keyword == "HEALTHCHECK"]
    options, _, command = health.args.partition(" CMD ")
    assert "--interval=" in options and "--timeout=" in options
    argv = json.loads(command)
    assert argv[:2] == ["python", "/opt/mcp-authz/healthcheck.py"]
    copies = [s.args.split() for s in steps if s.keyword == "COPY"]
    assert ["deploy/docker/healthcheck.py", "/opt/mcp-authz/healthcheck.py"] in copies


def test_sidecar_image_defaults() -> None:
    steps = final_stage(SIDECAR)
    env = env_values(steps)
    assert env["MCP_AUTHZ_CONFIG"] == "/etc/mcp-authz"
    grpc_port = env["MCP_AUTHZ_GRPC"].rsplit(":", 1)[1]
    admin = env["MCP_AUTHZ_ADMIN"]
    assert admin.startswith("127.0.0.1:"), "the admin endpoint is opt-in beyond the container"
    (expose,) = [s.args.split() for s in steps if s.keyword == "EXPOSE"]
    assert expose == [grpc_port, admin.rsplit(":", 1)[1]]
    (health,) = [s for s in steps if s.keyword == "HEALTHCHECK"]
    assert json.loads(health.args.partition(" CMD ")[2])[2:] == ["grpc"]
    (entry,) = [s for s in steps if s.keyword == "ENTRYPOINT"]
    assert entry.exec_form() == ["mcp-authz"]


def test_upstream_image_defaults() -> None:
    steps = final_stage(UPSTREAM)
    (entry,) = [s for s in steps if s.keyword == "ENTRYPOINT"]
    assert entry.exec_form() == ["/bin/sh", "/usr/local/bin/imagegen-entrypoint"]
    copies = [s.args.split() for s in steps if s.keyword == "COPY"]
    assert ["deploy/docker/imagegen-entrypoint.sh", "/usr/local/bin/imagegen-entrypoint"] in copies
    (cmd,) = [s for s in steps if s.keyword == "CMD"]
    argv = cmd.exec_form()
    assert argv[0] == "imagegen-upstream"
    port = argv[argv.index("--port") + 1]
    (health,) = [s for s in steps if s.keyword == "HEALTHCHECK"]
    assert json.loads(health.args.partition(" CMD ")[2])[-1] == f"http://127.0.0.1:{port}/healthz"
    (expose,) = [s.args for s in steps if s.keyword == "EXPOSE"]
    assert expose == port
    outputs = argv[argv.index("--outputs") + 1]
    assert env_values(steps)["IMAGEGEN_OUTPUTS"] == outputs


# -- build context ----------------------------------------------------------------------------


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, in order (Docker's matching, simplified)."""
    out = []
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negated, re.compile(regex)))
    return out


def in_build_context(relative: str) -> bool:
    """Whether .dockerignore lets `relative` (or, for a directory, its files) into the context."""
    parts = relative.strip("/").split("/")
    excluded = False
    for negated, regex in dockerignore_patterns():
        # A pattern matching the path or any parent directory applies; the last one wins.
        if any(regex.fullmatch("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negated
    return not excluded


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(path: Path) -> None:
    for step in instructions(path):
        if step.keyword != "COPY" or step.args.startswith("--from="):
            continue
        *sources, _ = step.args.split()
        for source in sources:
            assert (REPO / source).exists(), f"{path.name}: COPY {source}: no such file"
            assert in_build_context(source), f"{path.name}: COPY {source} is in .dockerignore"
            if (REPO / source).is_dir():
                inside = [p for p in (REPO / source).rglob("*.py") if "__pycache__" not in p.parts]
                assert inside and all(in_build_context(str(p.relative_to(REPO))) for p in inside), (
                    source
                )


def test_build_context_leaves_out_local_state() -> None:
    for relative in (
        ".venv/bin/python",
        ".git/HEAD",
        "outputs/x.png",
        "tests/__init__.py",
        "deploy/config/grants.json",
        "authz/__pycache__/cli.cpython-311.pyc",
    ):
        assert not in_build_context(relative), relative
    for relative in (
        "pyproject.toml",
        "README.md",
        "authz/cli/commands.py",
        "authz/_pb/__init__.py",
        "imagegen_upstream/cli.py",
        "deploy/docker/constraints.txt",
    ):
        assert in_build_context(relative), relative


# -- healthcheck.py ---------------------------------------------------------------------------


def run_probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The probe as the image's HEALTHCHECK runs it: a separate Python process."""
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--timeout", "2", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, int]]:
    """A real `mcp-authz serve` on deploy/config (memory counters), with the HTTP ext_authz
    port of the HTTP layouts: (gRPC port, admin port, HTTP ext_authz port)."""
    grpc_port, admin_port, http_port = free_port(), free_port(), free_port()
    log = tmp_path_factory.mktemp("sidecar") / "sidecar.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-c", "import sys; from authz.cli import main; sys.exit(main())",
                "serve", "--config", str(DEPLOY / "config"),
                "--grpc", f"127.0.0.1:{grpc_port}", "--admin", f"127.0.0.1:{admin_port}",
                "--http-authz", f"127.0.0.1:{http_port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: run_probe("http", f"http://127.0.0.1:{admin_port}/healthz").returncode == 0
        )
        yield grpc_port, admin_port, http_port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_grpc_probe_against_the_real_sidecar(sidecar: tuple[int, int, int]) -> None:
    grpc_port, _, _ = sidecar
    ok = run_probe("grpc", f"127.0.0.1:{grpc_port}")
    assert ok.returncode == 0, ok.stderr
    assert run_probe("grpc", f"127.0.0.1:{grpc_port}", "--service", "").returncode == 0
    unknown = run_probe("grpc", f"127.0.0.1:{grpc_port}", "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr


def test_grpc_probe_defaults_to_the_port_of_mcp_authz_grpc(
    sidecar: tuple[int, int, int],
) -> None:
    grpc_port, _, _ = sidecar
    # The image sets MCP_AUTHZ_GRPC=0.0.0.0:9001; the probe dials the wildcard on loopback.
    proc = run_probe("grpc", env={"MCP_AUTHZ_GRPC": f"0.0.0.0:{grpc_port}"})
    assert proc.returncode == 0, proc.stderr


@pytest.mark.processes
def test_probes_fail_when_nothing_listens() -> None:
    port = free_port()
    grpc = run_probe("grpc", f"127.0.0.1:{port}")
    assert grpc.returncode == 1 and grpc.stderr.startswith("unhealthy: grpc")
    http = run_probe("http", f"http://127.0.0.1:{port}/healthz")
    assert http.returncode == 1 and http.stderr.startswith("unhealthy: GET")


@pytest.mark.processes
def test_grpc_probe_reports_not_serving() -> None:
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set(AUTHZ_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        proc = run_probe("grpc", f"127.0.0.1:{port}")
        assert proc.returncode == 1 and "NOT_SERVING" in proc.stderr
        servicer.set(AUTHZ_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        assert run_probe("grpc", f"127.0.0.1:{port}").returncode == 0
    finally:
        server.stop(0)


@pytest.mark.processes
def test_http_probe_against_the_offline_gemini_endpoint() -> None:
    from imagegen_upstream.offline_gemini import start_in_thread

    server = start_in_thread("127.0.0.1", 0)
    try:
        port = server.server_address[1]
        assert run_probe("http", f"http://127.0.0.1:{port}/healthz").returncode == 0
        missing = run_probe("http", f"http://127.0.0.1:{port}/nope")
        assert missing.returncode == 1 and "HTTP 404" in missing.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_http_probe_against_the_sidecar_admin(sidecar: tuple[int, int, int]) -> None:
    _, admin_port, _ = sidecar
    assert run_probe("http", f"http://127.0.0.1:{admin_port}/healthz").returncode == 0


def test_http_probe_against_the_sidecar_http_authz_port(sidecar: tuple[int, int, int]) -> None:
    """The healthcheck of the HTTP layouts (compose's override, the Kubernetes HTTP gateway's
    readiness): GET /healthz on the HTTP ext_authz port, as Envoy's cluster checks it."""
    _, _, http_port = sidecar
    ok = run_probe("http", f"http://127.0.0.1:{http_port}{HEALTH_PATH}")
    assert ok.returncode == 0, ok.stderr
    # the port answers checks, not arbitrary paths: the probe tells them apart
    other = run_probe("http", f"http://127.0.0.1:{http_port}/nope")
    assert other.returncode == 1 and "HTTP 404" in other.stderr


# -- imagegen-entrypoint.sh -------------------------------------------------------------------


def entrypoint_env(**env: str) -> dict[str, str]:
    """The environment imagegen-entrypoint.sh hands to the command it execs."""
    sh = shutil.which("sh")
    assert sh is not None
    base = {"PATH": os.environ["PATH"]}
    proc = subprocess.run(
        [
            sh,
            str(ENTRYPOINT),
            sys.executable,
            "-c",
            "import json, os; print(json.dumps(dict(os.environ)))",
        ],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, str] = json.loads(proc.stdout)
    return result


@pytest.mark.processes
def test_entrypoint_uses_the_offline_endpoint_without_a_key() -> None:
    env = entrypoint_env(GOOGLE_API_KEY="", IMAGEGEN_OFFLINE_GEMINI_URL="http://gemini:8090")
    assert env["GOOGLE_API_KEY"] == "offline-demo-key"
    assert env["GOOGLE_GEMINI_BASE_URL"] == "http://gemini:8090"


@pytest.mark.processes
def test_entrypoint_keeps_a_real_key_and_the_default_endpoint() -> None:
    env = entrypoint_env(
        GOOGLE_API_KEY="real-key",
        GOOGLE_GEMINI_BASE_URL="",
        IMAGEGEN_OFFLINE_GEMINI_URL="http://gemini:8090",
    )
    assert env["GOOGLE_API_KEY"] == "real-key"
    assert "GOOGLE_GEMINI_BASE_URL" not in env  # empty is removed: the SDK's default applies


@pytest.mark.processes
def test_entrypoint_without_offline_endpoint_leaves_the_key_unset() -> None:
    env = entrypoint_env(GOOGLE_API_KEY="")
    assert "GOOGLE_API_KEY" not in env and "GOOGLE_GEMINI_BASE_URL" not in env


@pytest.mark.processes
def test_entrypoint_execs_its_arguments_unchanged() -> None:
    sh = shutil.which("sh")
    assert sh is not None
    proc = subprocess.run(
        [sh, str(ENTRYPOINT), sys.executable, "-c", "import sys; print(sys.argv[1:])", "a b", "$X"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert proc.stdout.strip() == "['a b', '$X']"
