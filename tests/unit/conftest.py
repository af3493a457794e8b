"""Real redis-server fixtures shared by the unit tests of the Redis-backed stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisClusterProcesses, RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server per test module."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A 3-node Redis Cluster per test module."""
    with RedisClusterProcesses(3) as cluster:
        yield cluster


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that kill or pause it."""
    with RedisServer() as server:
        yield server
