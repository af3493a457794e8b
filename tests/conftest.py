"""The `processes` marker, applied exactly and checked while the tests run.

A test is marked `processes` when it, or a fixture it uses, starts a process (Envoy, Redis,
the sidecar, an MCP server, the CLI, docker) or a server that listens on a socket (uvicorn,
http.server, a grpc server, in a thread). `pytest -m "not processes"` runs the pure tests.

Where the mark comes from:
- a fixture in `PROCESS_FIXTURES`: every test that uses it (directly or through another
  fixture) is marked here, at collection;
- `@pytest.mark.processes` (or a module's `pytestmark`) on a test that starts one itself.

The check: every process started (`subprocess.Popen`) and every socket that starts
listening (`socket.listen`, `grpc.server`, `grpc.aio.server`) is attributed to the test
being set up or run, and to the fixture being set up. A test that is not marked and starts
one fails. At the end of a run, a marked test that started none and uses no fixture that
started one is reported, and the run fails. (Holding a port with `authz.devstack.stack.free_port`
listens for a moment and counts for nothing: no server runs.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

import authz.devstack.stack

MARK = "processes"

PROCESS_FIXTURES = frozenset(
    {
        "admin",
        "adv_stack",
        "big_stack",
        "bucket_stack",
        "compose_stack",
        "demo",
        "fleet",
        "gemini",
        "harness",
        "imagegen",
        "iso_stack",
        "json_upstream",
        "listener",
        "memory_stack",
        "mesh",
        "offline_url",
        "own_server",
        "pager_stack",
        "receiver",
        "redis",
        "redis_cluster",
        "redis_server",
        "redis_stack",
        "resolved",
        "server",
        "sidecar",
        "smoke_stack",
        "sse_upstream",
        "stack",
        "stub",
        "typed",
        "upstream",
    }
)
"""Fixtures that start processes or listening servers (tests/conftest.py checks the list)."""


@dataclass
class _Watch:
    """Who started which process or listener during this run."""

    item: pytest.Item | None = None
    phase: str = ""
    fixtures: list[str] = field(default_factory=list)
    by_fixture: set[str] = field(default_factory=set)
    by_item: dict[str, list[str]] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(default_factory=dict)
    ran: dict[str, pytest.Item] = field(default_factory=dict)
    used: dict[str, set[str]] = field(default_factory=dict)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def saw(self, what: str) -> None:
        if self.fixtures:
            self.by_fixture.add(self.fixtures[-1])
        item = self.item
        if item is None or self.phase not in ("setup", "call"):
            return  # at collection or while tearing down (stopping is not starting)
        self.by_item.setdefault(item.nodeid, []).append(what)
        if item.get_closest_marker(MARK) is None:
            where = f" (fixture {self.fixtures[-1]!r})" if self.fixtures else ""
            self.violations.setdefault(item.nodeid, []).append(what + where)


_watch = _Watch()


def _wrap(owner: Any, name: str, describe: Callable[..., str]) -> None:
    original = getattr(owner, name)

    def watched(*args: Any, **kwargs: Any) -> Any:
        _watch.saw(describe(*args, **kwargs))
        return original(*args, **kwargs)

    setattr(owner, name, watched)
    _watch.undo.append(lambda: setattr(owner, name, original))


def _popen(_self: Any, args: Any, *_rest: Any, **_kwargs: Any) -> str:
    argv = [args] if isinstance(args, (str, bytes)) else list(args)
    return f"starts a process: {' '.join(str(a) for a in argv)[:120]}"


def _listen(sock: socket.socket, *_args: Any) -> str:
    return f"listens on {sock.getsockname()}"


def _grpc_server(*_args: Any, **_kwargs: Any) -> str:
    return "starts a grpc server"


def pytest_configure(config: pytest.Config) -> None:
    _wrap(subprocess.Popen, "__init__", _popen)
    _wrap(grpc, "server", _grpc_server)
    _wrap(grpc.aio, "server", _grpc_server)
    original_listen = socket.socket.listen
    reserve = authz.devstack.stack.reserve_port.__code__

    def listen(sock: socket.socket, *args: Any) -> None:
        if sys._getframe(1).f_code is not reserve:
            _watch.saw(_listen(sock))
        original_listen(sock, *args)

    socket.socket.listen = listen  # type: ignore[method-assign]
    _watch.undo.append(lambda: setattr(socket.socket, "listen", original_listen))


def pytest_unconfigure(config: pytest.Config) -> None:
    while _watch.undo:
        _watch.undo.pop()()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(MARK)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Generator[None, Any, Any]:
    _watch.fixtures.append(fixturedef.argname)
    try:
        return (yield)
    finally:
        _watch.fixtures.pop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _watch.ran[item.nodeid] = item
    with _PhaseScope(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _PhaseScope(item, "call"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    with _PhaseScope(item, "teardown"):
        return (yield)


class _PhaseScope:
    def __init__(self, item: pytest.Item, phase: str) -> None:
        self.item, self.phase = item, phase

    def __enter__(self) -> None:
        _watch.item, _watch.phase = self.item, self.phase

    def __exit__(self, *exc: object) -> None:
        _watch.item, _watch.phase = None, ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    found = _watch.violations.get(item.nodeid)
    if found and call.when == "call" and report.passed:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} is not marked `{MARK}` but "
            + "; ".join(dict.fromkeys(found))
            + ": mark it, or add the fixture to PROCESS_FIXTURES (tests/conftest.py)"
        )
    return report


@pytest.fixture(autouse=True)
def _fixtures_used(request: pytest.FixtureRequest) -> Iterator[None]:
    """Records every fixture the test used, those it asked for by name at run time too."""
    try:
        yield
    finally:
        _watch.used[request.node.nodeid] = set(request.fixturenames)


def _needless_marks() -> list[str]:
    """Marked tests that started nothing and used no fixture that started something."""
    needless = []
    for nodeid, item in _watch.ran.items():
        if item.get_closest_marker(MARK) is None or nodeid in _watch.by_item:
            continue
        if _watch.by_fixture & _watch.used.get(nodeid, set()):
            continue
        needless.append(nodeid)
    return needless


def pytest_terminal_summary(terminalreporter: Any) -> None:
    needless = _needless_marks()
    if needless:
        terminalreporter.section(f"marked `{MARK}` but start no process or listener")
        for nodeid in needless:
            terminalreporter.line(nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _needless_marks() and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
