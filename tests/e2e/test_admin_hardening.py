"""The admin listener trusts only the socket: real sidecar processes, raw sockets.

- The approvals API's loopback gate reads the TCP peer, whatever `X-Forwarded-For` says,
  even when the environment tells uvicorn to trust every proxy (`FORWARDED_ALLOW_IPS=*`).
- A request that is not completely sent (head or body) is closed within 10 s, as is a
  connection that sends nothing; the listener keeps answering others meanwhile.
- A path with an encoded slash or backslash (`%2F`, `%5C`, any case) is a 404 anywhere on the
  listener, so `/approvals%2F<id>%2Fapprove` cannot approve past a rule written on raw paths.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from authz.devstack.stack import LOOPBACK, Ports, Stack
from tests.e2e.test_approvals import APPROVER_TOKEN, GEMINI, admin, approval_id, call
from tests.e2e.test_approvals import write_config as write_approvals_config

pytestmark = pytest.mark.e2e

CLOSE_WITHIN = 10.0
"""The contract: a half-sent request is closed within 10 s."""


def outward_address() -> str:
    """This machine's address on its default route (not loopback): a 'remote' client."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # TEST-NET-2; a UDP connect sends nothing
        address = str(probe.getsockname()[0])
    assert not ipaddress.ip_address(address).is_loopback, address
    return address


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("admin-hardening")
    record = base / "executed.jsonl"
    record.touch()
    ports = Ports()
    the_stack = Stack(
        config_dir=write_approvals_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        ports=ports,
        # uvicorn reads FORWARDED_ALLOW_IPS from the environment: trust every proxy
        extra_env={"IMAGEGEN_RECORD_FILE": str(record), "FORWARDED_ALLOW_IPS": "*"},
        # every interface, as the deployments bind it (probes and scrapes)
        sidecar_args=("--admin", f"0.0.0.0:{ports.authz_admin}"),
    )
    with the_stack:
        yield the_stack


def get(host: str, port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=10, source_address=(host, 0))
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes, method: str = "POST") -> tuple[int, bytes]:
    """One request sent as raw bytes (the path exactly as given); (status, body)."""
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


# -- the loopback gate ------------------------------------------------------------------


def test_forwarded_for_does_not_pass_the_loopback_gate(stack: Stack) -> None:
    remote = outward_address()
    port = stack.ports.authz_admin
    auth = {"Authorization": f"Bearer {APPROVER_TOKEN}"}
    for spoof in ("127.0.0.1", "::1", "127.0.0.1, 127.0.0.1"):
        status, body = get(remote, port, "/approvals", {**auth, "X-Forwarded-For": spoof})
        assert status == 403, (spoof, status, body[:200])
        assert b"loopback" in body
    status, _ = get(remote, port, "/approvals", {**auth, "Forwarded": "for=127.0.0.1"})
    assert status == 403
    # the probes stay open to everyone
    status, _ = get(remote, port, "/healthz", {})
    assert status == 200
    # and a loopback peer is served whatever a header claims
    status, body = get(LOOPBACK, port, "/approvals", {**auth, "X-Forwarded-For": "203.0.113.9"})
    assert status == 200, body[:200]


# -- half-sent requests -------------------------------------------------------------------


def _closed_after(
    port: int,
    pieces: list[bytes],
    gap: float,
    results: dict[str, float],
    name: str,
    in_place: threading.Event | None = None,
) -> threading.Thread:
    """Send `pieces` `gap` seconds apart (never finishing the request), then wait for the
    server to close the connection; record the seconds from connect to close. `in_place` is
    set once the connection is open and its first piece sent."""

    def run() -> None:
        started = time.monotonic()
        try:
            with socket.create_connection((LOOPBACK, port), timeout=30) as sock:
                sock.settimeout(0.2)
                sent = 0
                while True:
                    if sent < len(pieces) and time.monotonic() >= started + sent * gap:
                        try:
                            sock.sendall(pieces[sent])
                        except OSError:
                            break
                        sent += 1
                    if in_place is not None:
                        in_place.set()
                    try:
                        if sock.recv(65536) == b"":
                            break
                    except TimeoutError:
                        pass
                    except OSError:
                        break
                    if time.monotonic() - started > 30:
                        break
        finally:
            results[name] = time.monotonic() - started

    return threading.Thread(target=run, daemon=True)


def test_half_sent_requests_are_closed_within_10_s(stack: Stack) -> None:
    port = stack.ports.authz_admin
    head = b"GET /healthz HTTP/1.1\r\nHost: admin\r\nX-Padding: aaaa"
    body_head = (
        b"POST /approvals/apr_000000000000000000000000/deny HTTP/1.1\r\nHost: admin\r\n"
        b"Authorization: Bearer " + APPROVER_TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    results: dict[str, float] = {}
    in_place = [threading.Event() for _ in range(4)]
    threads = [
        _closed_after(port, [], 0, results, "nothing sent", in_place[0]),
        _closed_after(port, [head], 0, results, "half a head", in_place[1]),
        # one byte a second: the deadline runs from the start, more bytes do not extend it
        _closed_after(
            port, [bytes([b]) for b in head], 1.0, results, "a byte a second", in_place[2]
        ),
        _closed_after(port, [body_head + b'{"reason": "'], 0, results, "half a body", in_place[3]),
    ]
    for thread in threads:
        thread.start()
    assert all(event.wait(10) for event in in_place)  # every slow client is connected
    status, _ = get(LOOPBACK, port, "/healthz", {})  # others are served meanwhile
    assert status == 200
    for thread in threads:
        thread.join(40)
    assert set(results) == {"nothing sent", "half a head", "a byte a second", "half a body"}
    slow = {name: round(seconds, 1) for name, seconds in results.items() if seconds > CLOSE_WITHIN}
    assert not slow, f"open longer than {CLOSE_WITHIN} s: {slow}"


# -- encoded slashes ------------------------------------------------------------------------


async def test_encoded_slashes_are_404(stack: Stack) -> None:
    held = approval_id(await call(stack, "agent-a", GEMINI, {"prompt": "a logo, encoded"}))
    port = stack.ports.authz_admin
    auth = f"Authorization: Bearer {APPROVER_TOKEN}\r\n".encode()
    for target in (
        f"/approvals%2F{held}%2Fapprove",
        f"/approvals%2f{held}%2fapprove",
        f"/approvals/{held}%2Fapprove",
        f"/approvals%2F{held}/approve",
        f"/approvals%5C{held}%5Capprove",
        f"/approvals%5c{held}/approve",
    ):
        request = (
            f"POST {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n".encode()
            + auth
            + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        status, body = raw(port, request)
        assert status == 404, (target, status, body[:200])
    for target in (f"/approvals%2F{held}", "/healthz%2F", "/%2Fapprovals", "/approvals%2F"):
        request = (
            f"GET {target} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n".encode()
            + auth
            + b"\r\n"
        )
        status, body = raw(port, request)
        assert status == 404, (target, status, body[:200])
        assert "error" in json.loads(body)
    status, shown, _ = admin(stack.admin_url, "GET", f"/approvals/{held}")
    assert status == 200 and shown["status"] == "pending"  # nothing was approved
