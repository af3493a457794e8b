"""Real `redis-server` processes for tests: one standalone server, or a 3-master cluster.

Every server binds 127.0.0.1 on a free port, keeps its files in a temporary directory and
persists nothing (`--save "" --appendonly no`). A missing `redis-server` (or `redis-cli`
for a cluster) raises `RedisNotInstalled`, so tests that need Redis fail, never skip.

    with RedisServer() as server:          # started, PING answered
        server.url                         # redis://127.0.0.1:<port>/0
        server.kill(); server.start()      # SIGKILL, then a fresh server on the same port
    with RedisClusterProcesses() as cluster:
        cluster.url                        # redis://127.0.0.1:<port of the first node>
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from authz.devstack.stack import free_port as stack_free_port
from authz.devstack.stack import reserve_port

__all__ = [
    "RedisClusterProcesses",
    "RedisNotInstalled",
    "RedisServer",
    "free_port",
]

HOST = "127.0.0.1"
CLUSTER_BUS_OFFSET = 10_000


class RedisNotInstalled(RuntimeError):
    """`redis-server` or `redis-cli` is not on PATH (Debian/Ubuntu: apt-get install redis)."""


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RedisNotInstalled(
            f"{name} not found on PATH: install Redis (Debian/Ubuntu: apt-get install "
            f"redis-server redis-tools); tests that need Redis fail without it"
        )
    return path


def free_port(*, cluster: bool = False) -> int:
    """A loopback port held for a server (`authz.devstack.stack.free_port`); with `cluster`, its
    cluster bus port (+10000) is held too."""
    for _ in range(200):
        port = stack_free_port(HOST)
        if not cluster:
            return port
        if port + CLUSTER_BUS_OFFSET < 65536:
            try:
                reserve_port(port + CLUSTER_BUS_OFFSET, HOST)
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found")


def _command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command; the reply's payload (a simple or bulk string, or an error)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the reply")
            reply += chunk
        header, _, rest = reply.partition(b"\r\n")
        if not header.startswith(b"$"):
            return header  # +PONG, -ERR ..., :1
        size = int(header[1:])
        if size < 0:
            return b""
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the reply")
            rest += chunk
        return rest[:size]


class RedisServer:
    """One `redis-server` process; `stop`/`kill` keep the port so `start` can reuse it."""

    def __init__(
        self,
        port: int | None = None,
        *,
        cluster_node: bool = False,
        directory: Path | None = None,
        binary: str = "redis-server",
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary
        self.cluster_node = cluster_node
        self.port = port if port is not None else free_port(cluster=cluster_node)
        self._own_dir = directory is None
        self.directory = (
            Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-")) if directory is None else directory
        )
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return HOST

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def argv(self) -> list[str]:
        args = [
            _binary(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", "redis.log",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.cluster_node:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        return args

    def start(self) -> RedisServer:
        """Start (or start again, on the same port) and wait until PING answers."""
        if self.running:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.process.returncode}:"
                    f"\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if _command(self.port, "PING", timeout=0.5).startswith(b"+PONG"):
                    return self
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (SIGKILL after `timeout`)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes at once, as in a crash."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (a hung server)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        """One raw RESP command (for simple replies)."""
        return _command(self.port, *args)

    def log_tail(self, lines: int = 20) -> str:
        log = self.directory / "redis.log"
        if not log.exists():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisClusterProcesses:
    """A Redis Cluster of `masters` real processes, no replicas, every slot assigned."""

    def __init__(self, masters: int = 3, *, start_timeout: float = 20.0) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.start_timeout = start_timeout
        self.root = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.nodes: list[RedisServer] = []
        for i in range(masters):
            node = RedisServer(cluster_node=True, directory=self.root / f"node-{i}")
            while any(node.port == other.port for other in self.nodes):
                node = RedisServer(cluster_node=True, directory=self.root / f"node-{i}")
            self.nodes.append(node)

    @property
    def url(self) -> str:
        """A startup node for `RedisCluster.from_url`."""
        return f"redis://{self.nodes[0].address}"

    def start(self) -> RedisClusterProcesses:
        cli = _binary("redis-cli")
        for node in self.nodes:
            node.start()
        addresses = [node.address for node in self.nodes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        deadline = time.monotonic() + self.start_timeout
        while not all(self._ready(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    @staticmethod
    def _ready(node: RedisServer) -> bool:
        try:
            info = node.command("CLUSTER", "INFO")
        except OSError:
            return False
        return b"cluster_state:ok" in info and b"cluster_slots_ok:16384" in info

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RedisClusterProcesses:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
