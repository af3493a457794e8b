"""What both Redis stores (counters, approvals) share: the client, its key prefix, a
deadline per operation, and how a failure is reported.

`connect` makes a client that never retries (a retried script could take quota twice) and
times out connects and reads at the operation deadline. `ScriptStore` is the base of both
stores: one client (which one store may own and the other borrow, so that a sidecar keeps one
connection pool), keys under `<prefix>:<hash tag>:`, Lua scripts run within `timeout`, and
every Redis error, timeout or refused connection raised as the store's own "unavailable"
exception, which its callers turn into fail-closed denials.

On a standalone server a script runs as one `EVALSHA` written straight on a pooled
connection of the client (`pack_command`, `send_packed_command`, `read_response` with
hiredis' parser when installed), under the operation's one deadline: the client's command
layer (retries, which are off, and per-command instrumentation) and a second timer per read
cost about 40 µs of CPU per call for nothing this store uses. A cancelled or failed call
drops its connection (redis-py does, so no reply is left unread on it). A server that does
not know the script (`NOSCRIPT`: restarted, flushed) gets it loaded, and the call is sent
once more. On a Redis Cluster a script goes through the client's `Script` (the cluster
client routes it by its keys' slot).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar, Final, Self
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "REDIS_FAILURES",
    "ScriptStore",
    "check_prefix",
    "cluster_ready",
    "connect",
    "location",
]

DEFAULT_PREFIX: Final = "mcp-authz"
DEFAULT_TIMEOUT: Final = 0.25
"""Seconds per operation (and per socket connect/read with `connect`)."""
REDIS_FAILURES: Final = (RedisError, RedisClusterException, OSError, TimeoutError)
"""What a Redis call can raise when the server cannot answer (stores map it to unavailable)."""

_BAD_PREFIX = re.compile(r"[{}\s\x00-\x1f\x7f]")


def _redact(url: str) -> str:
    """The URL without user name or password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def _client_url(client: Redis | RedisCluster) -> str:
    if isinstance(client, RedisCluster):
        nodes = sorted(client.nodes_manager.startup_nodes)
        return "redis://" + ",".join(nodes) if nodes else "redis://?"
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    host = kwargs.get("host", "localhost")
    if ":" in str(host):
        host = f"[{host}]"
    return f"redis://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def check_prefix(prefix: str) -> str:
    """`prefix` if it keeps a key layout intact (non-empty, no brace, no whitespace)."""
    if not prefix or _BAD_PREFIX.search(prefix):
        raise ValueError(
            f"Redis key prefix must be non-empty, without braces or whitespace: {prefix!r}"
        )
    return prefix


def connect(url: str, *, cluster: bool, timeout: float) -> Redis | RedisCluster:
    """A new client for `url`: connect timeout `timeout`, no retries, no health checks.

    A cluster client also times out each socket read and write at `timeout` (its own
    topology calls). A standalone one does not: every operation of a store runs under the
    store's deadline (`ScriptStore`), and redis-py would otherwise run each write's drain
    as a task of its own (`asyncio.wait_for`), a turn of the event loop per command."""
    options: dict[str, Any] = {
        "socket_timeout": timeout if cluster else None,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, **options)


def location(client: Redis | RedisCluster, url: str | None) -> str:
    """`<kind> <url>` for `describe`: the URL without credentials (or the client's address)."""
    kind = "redis-cluster" if isinstance(client, RedisCluster) else "redis"
    return f"{kind} {_redact(url) if url is not None else _client_url(client)}"


async def cluster_ready(client: Redis | RedisCluster) -> None:
    """Discover a cluster's slots before the first command (no-op once done, or standalone).

    redis-py's async cluster client routes commands issued concurrently with its lazy
    first discovery without their slot, and some fail; discovering first avoids that.
    """
    if isinstance(client, RedisCluster):
        await client.initialize()


class ScriptStore:
    """The base of a Redis-backed store: see the module docstring.

    `owns_client`: whether `close` closes the client (False when another store lent it).
    Subclasses set `hash_tag` and `unavailable`.
    """

    hash_tag: ClassVar[str]
    unavailable: ClassVar[type[Exception]]

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        url: str | None = None,
        owns_client: bool = True,
    ) -> None:
        check_prefix(prefix)
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._client = client
        self._prefix = prefix
        self._timeout = timeout
        self._owns_client = owns_client
        self._location = location(client, url)
        self._base = f"{prefix}:{self.hash_tag}:"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        cluster: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> Self:
        """A store on a new client for `url` (`redis://`, `rediss://`, `unix://`), which it
        owns. With `cluster`, `url` names any node of a Redis Cluster. Connect and read
        timeouts are `timeout`; the client never retries (callers fail fast instead).
        `options` are the store's own keyword arguments (e.g. `prefix`)."""
        client = connect(url, cluster=cluster, timeout=timeout)
        return cls(client, timeout=timeout, url=url, **options)

    @property
    def client(self) -> Redis | RedisCluster:
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    async def ping(self) -> bool:
        """Readiness: True when the shard holding this store's keys answers within the
        timeout. Reads a key with the store's hash tag, so on a cluster it asks that shard.
        Never raises."""
        try:
            async with asyncio.timeout(self._timeout):
                await cluster_ready(self._client)
                await self._client.exists(f"{self._base}health")
        except REDIS_FAILURES:
            return False
        return True

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def describe(self) -> str:
        return f"{self._location} prefix={self._prefix}"

    async def _script(self, script: AsyncScript, keys: list[str], args: Sequence[Any]) -> Any:
        """Run one registered Lua script within the deadline; failures as `unavailable`."""
        try:
            async with asyncio.timeout(self._timeout):
                if isinstance(self._client, RedisCluster):
                    await cluster_ready(self._client)
                    return await script(keys=keys, args=list(args))
                try:
                    return await self._evalsha(script, keys, args)
                except NoScriptError:
                    await self._client.script_load(script.script)
                    return await self._evalsha(script, keys, args)
        except REDIS_FAILURES as exc:
            detail = str(exc) or "timed out"
            raise self.unavailable(f"{self.describe()}: {type(exc).__name__}: {detail}") from exc

    async def _evalsha(self, script: AsyncScript, keys: list[str], args: Sequence[Any]) -> Any:
        """One EVALSHA on a pooled connection of a standalone client (see the module
        docstring); the caller's deadline bounds it (`read_response` adds no timer)."""
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            command = connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
            await connection.send_packed_command(command, check_health=False)
            return await connection.read_response(timeout=math.inf)
        finally:
            await pool.release(connection)
