"""What only tests and benchmarks do to a running `Stack`: freeze, thaw, kill and restart its
processes, read Envoy's counters, sample a process's memory, descriptors and threads.

The fault tests (`tests/e2e/test_faults.py` and others) and `bench/soak.py` use these; the
demo never does. Each process of a stack runs in its own session, so a signal reaches it and
its children.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from authz.devstack.stack import LOOPBACK, Stack, StackError

__all__ = [
    "ProcSample",
    "envoy_stats",
    "kill",
    "pause",
    "pid",
    "proc_sample",
    "restart",
    "resume",
    "sample",
    "signal_process",
]


def pid(stack: Stack, name: str) -> int:
    """The OS pid of a running process of the stack (`sidecar`, `envoy`, ...)."""
    proc = stack.procs.get(name)
    if proc is None or proc.popen.poll() is not None:
        raise StackError(f"{name} is not running")
    return proc.popen.pid


def signal_process(stack: Stack, name: str, sig: signal.Signals) -> None:
    """Send `sig` to the process group of `name` (each process has its own session)."""
    os.killpg(pid(stack, name), sig)


def pause(stack: Stack, name: str) -> None:
    """Freeze `name` with SIGSTOP: it keeps its sockets but answers nothing."""
    signal_process(stack, name, signal.SIGSTOP)


def resume(stack: Stack, name: str) -> None:
    """Thaw a process frozen by `pause` (SIGCONT)."""
    signal_process(stack, name, signal.SIGCONT)


def kill(stack: Stack, name: str, timeout: float = 5.0) -> int:
    """SIGKILL `name` (no graceful shutdown), wait for it and forget it; returns its code."""
    proc = stack.procs.pop(name, None)
    if proc is None:
        raise StackError(f"{name} is not running")
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    return proc.popen.wait(timeout)


def restart(stack: Stack, name: str) -> None:
    """Start `name` again (after `kill` or `Stack.stop_process`) on the same ports.

    Envoy keeps running: its clusters reconnect to the new process on the next request.
    """
    starters: dict[str, Callable[[], None]] = {
        "upstream": stack.start_upstream,
        "gemini": stack.start_gemini,
    }
    for index, sidecar in enumerate(stack.sidecar_names):
        starters[sidecar] = functools.partial(stack.start_sidecar, index)
    if name not in starters:
        raise StackError(f"cannot restart {name!r}; restartable: {sorted(starters)}")
    stack.stop_process(name)
    starters[name]()


def envoy_stats(stack: Stack, pattern: str) -> dict[str, int]:
    """Envoy's counters and gauges whose name matches the regex `pattern` (admin /stats).

    Unlike the access log (flushed every few seconds), these are current at once.
    """
    query = urllib.parse.urlencode({"filter": pattern})
    url = f"http://{LOOPBACK}:{stack.ports.envoy_admin}/stats?{query}"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    stats: dict[str, int] = {}
    for line in text.splitlines():
        stat, _, value = line.partition(": ")
        if value.strip().isdigit():
            stats[stat] = int(value)
    return stats


@dataclass(frozen=True)
class ProcSample:
    rss_kb: int
    """VmRSS from /proc/PID/status, in KiB."""
    fds: int
    """Entries in /proc/PID/fd."""
    threads: int


def sample(stack: Stack, name: str) -> ProcSample:
    """RSS, open file descriptors and threads of `name`, read from /proc (Linux)."""
    return proc_sample(pid(stack, name))


def proc_sample(process: int) -> ProcSample:
    """Read one `ProcSample` of the process `process` (a pid) from /proc (Linux only)."""
    rss_kb = threads = 0
    for line in Path(f"/proc/{process}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            rss_kb = int(value.split()[0])
        elif key == "Threads":
            threads = int(value.strip())
    fds = len(os.listdir(f"/proc/{process}/fd"))
    return ProcSample(rss_kb=rss_kb, fds=fds, threads=threads)
