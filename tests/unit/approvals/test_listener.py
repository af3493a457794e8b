"""The admin listener's uvicorn set-up (`authz.approvals.listener`): proxy headers off, a
deadline per request, encoded slashes refused. The deadline's state machine is driven here
byte by byte without waiting for it; tests/e2e/test_admin_hardening.py times it for real."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.server import ServerState

from authz.approvals.listener import (
    REQUEST_READ_SECONDS,
    DeadlineH11Protocol,
    RefuseEncodedSlashes,
    admin_config,
    has_encoded_separator,
)
from authz.devstack.stack import free_port


async def _echo(request: Request) -> JSONResponse:
    body = await request.body()
    client = request.client.host if request.client else None
    return JSONResponse({"path": request.url.path, "client": client, "body": len(body)})


APP = Starlette(
    routes=[
        Route("/approvals/{approval_id}/approve", _echo, methods=["POST"]),
        Route("/healthz", _echo, methods=["GET", "POST"]),
    ]
)


@pytest.mark.parametrize(
    ("raw_path", "refused"),
    [
        (b"/approvals/apr_1/approve", False),
        (b"/approvals%2Fapr_1%2Fapprove", True),
        (b"/approvals%2fapr_1", True),
        (b"/approvals%5Capr_1", True),
        (b"/approvals%5capr_1", True),
        (b"/%2F", True),
        (b"/approvals%252Fapr_1", False),  # %25 is a literal percent: not a separator
        (b"/a%20b", False),
        (b"/%2", False),
    ],
)
def test_has_encoded_separator(raw_path: bytes, refused: bool) -> None:
    assert has_encoded_separator(raw_path) is refused


def test_the_config_trusts_no_proxy_header_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    config = admin_config(APP, host="127.0.0.1", port=free_port())
    assert config.proxy_headers is False
    config.load()
    app: Any = config.loaded_app
    while hasattr(app, "app"):  # uvicorn's own wrappers, then ours
        assert not isinstance(app, ProxyHeadersMiddleware)
        if isinstance(app, RefuseEncodedSlashes):
            break
        app = app.app
    assert isinstance(app, RefuseEncodedSlashes)
    assert config.http_protocol_class is DeadlineH11Protocol
    assert config.access_log is False


# -- the deadline, step by step ------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.written = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 9002)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: Any) -> None:
        self.written += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture
async def protocol() -> tuple[DeadlineH11Protocol, FakeTransport]:
    config = admin_config(APP, host="127.0.0.1", port=0)
    config.load()
    made = DeadlineH11Protocol(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    made.connection_made(transport)
    return made, transport


async def test_the_deadline_runs_from_the_connection_until_the_request_is_in(
    protocol: tuple[DeadlineH11Protocol, FakeTransport],
) -> None:
    made, transport = protocol
    assert made.reading_request  # nothing sent yet: the deadline already runs
    made.data_received(b"POST /healthz HTTP/1.1\r\nHost: a\r\n")
    assert made.reading_request  # half a head
    made.data_received(b"Content-Length: 4\r\n\r\nab")
    assert made.reading_request  # the head, half a body
    made.data_received(b"cd")
    assert not made.reading_request  # all of it: the app has it, no deadline while it works
    for _ in range(50):
        if transport.written:
            break
        await asyncio.sleep(0.01)
    assert transport.written.startswith(b"HTTP/1.1 200")
    assert not transport.closed


async def test_an_expired_deadline_closes_the_connection(
    protocol: tuple[DeadlineH11Protocol, FakeTransport],
) -> None:
    made, transport = protocol
    made.data_received(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    made._expired()  # what the timer calls
    assert transport.closed
    assert transport.written == b""  # nothing is answered to half a request


async def test_more_bytes_do_not_extend_the_deadline(
    protocol: tuple[DeadlineH11Protocol, FakeTransport],
) -> None:
    made, _ = protocol
    first = made._read_deadline
    assert first is not None
    made.data_received(b"G")
    made.data_received(b"ET / HTTP/1.1\r\n")
    assert made._read_deadline is first
    assert first.when() - asyncio.get_running_loop().time() <= REQUEST_READ_SECONDS


async def test_a_kept_alive_connection_starts_a_new_deadline_with_the_next_request(
    protocol: tuple[DeadlineH11Protocol, FakeTransport],
) -> None:
    made, transport = protocol
    made.data_received(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert not made.reading_request
    for _ in range(50):
        if transport.written.endswith(b"}"):
            break
        await asyncio.sleep(0.01)
    assert transport.written.startswith(b"HTTP/1.1 200")
    assert not made.reading_request  # idle: uvicorn's keep-alive timeout applies
    made.data_received(b"GET /healthz HTTP/1.1\r\n")
    assert made.reading_request
    made.connection_lost(None)
    assert not made.reading_request


# -- over a real socket -------------------------------------------------------------------


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(admin_config(APP, host="127.0.0.1", port=port))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize(
    "target",
    [
        "/approvals%2Fapr_1%2Fapprove",
        "/approvals%2fapr_1/approve",
        "/approvals/apr_1%2Fapprove",
        "/approvals%5Capr_1/approve",
        "/healthz%2F",
    ],
)
def test_encoded_slashes_are_404_before_the_app(listener: int, target: str) -> None:
    answer = exchange(
        listener,
        f"POST {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        "Content-Length: 2\r\n\r\n{}".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 404"), answer[:100]
    assert b"encoded slashes" in answer
    assert b"uvicorn" not in answer.lower()  # no server header


def test_plain_paths_and_the_socket_peer_reach_the_app(listener: int) -> None:
    answer = exchange(
        listener,
        b"POST /approvals/apr_1/approve HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
        b"X-Forwarded-For: 10.9.8.7\r\nForwarded: for=10.9.8.7\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert b'"client":"127.0.0.1"' in answer  # the TCP peer, never a header
    assert b'"path":"/approvals/apr_1/approve"' in answer
