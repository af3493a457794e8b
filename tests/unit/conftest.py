"""Fixtures shared by the unit tests: real redis-server processes for the Redis-backed stores,
and the request pipeline on the configurations of `tests.unit.calls`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.pipeline.gate import Authorizer
from tests.redis_server import RedisClusterProcesses, RedisServer
from tests.unit.calls import mesh_authorizer_at, seed_authorizer_at


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


@pytest.fixture
def authorizer(tmp_path: Path) -> Authorizer:
    """The pipeline on the seed configuration (`tests.unit.calls`)."""
    return seed_authorizer_at(tmp_path)


@pytest.fixture
def mesh_authorizer(tmp_path: Path) -> Authorizer:
    """The pipeline on the mesh configuration (`tests.unit.calls`)."""
    return mesh_authorizer_at(tmp_path)
