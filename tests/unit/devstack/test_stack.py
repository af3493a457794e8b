"""authz.devstack.stack's port picking: a port handed out stays ours until our server binds it."""

from __future__ import annotations

import errno
import socket

import pytest

from authz.devstack.stack import LOOPBACK, free_port, reserve_port


def _bind(port: int, *, reuse: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if reuse:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        sock.close()
        raise
    return sock


def test_ports_are_distinct() -> None:
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == len(ports)


@pytest.mark.processes
def test_a_held_port_is_refused_to_others_and_taken_by_a_server_that_reuses_it() -> None:
    port = free_port()
    with pytest.raises(OSError) as taken:
        _bind(port, reuse=False).close()
    assert taken.value.errno == errno.EADDRINUSE
    with _bind(port, reuse=True) as server:  # how Envoy, grpc, uvicorn and Redis bind
        server.listen(1)
        with socket.create_connection((LOOPBACK, port), timeout=5):
            pass


@pytest.mark.processes
def test_the_kernel_never_hands_a_held_port_to_bind_zero_or_a_connection() -> None:
    held = {free_port() for _ in range(50)}
    with _bind(0, reuse=True) as server:
        server.listen(128)
        address = server.getsockname()
        for round_no in range(4):
            sockets = [_bind(0, reuse=bool((round_no + i) % 2)) for i in range(500)]
            try:
                assert not held & {s.getsockname()[1] for s in sockets}
            finally:
                for sock in sockets:
                    sock.close()
            clients = [socket.create_connection(address[:2], timeout=5) for _ in range(100)]
            try:
                assert not held & {c.getsockname()[1] for c in clients}
            finally:
                for client in clients:
                    client.close()
                for _ in clients:
                    server.accept()[0].close()


@pytest.mark.processes
def test_a_given_port_is_held_only_when_nothing_uses_it() -> None:
    with _bind(0, reuse=True) as server:
        server.listen(1)
        busy = server.getsockname()[1]
        with pytest.raises(OSError):
            reserve_port(busy)
    port = free_port()
    with pytest.raises(OSError):  # held already (TIME_WAIT): not handed out twice
        reserve_port(port)
