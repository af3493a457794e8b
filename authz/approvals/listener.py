"""The admin listener's HTTP server (uvicorn), trusting only the socket.

The admin listener serves the approvals API beside the probes, and deployments bind it to
every interface. Three things keep a client from talking its way past it:

- **No proxy headers.** uvicorn rewrites the client address from `X-Forwarded-For` when the
  peer is in `FORWARDED_ALLOW_IPS` (an environment variable it reads on its own), which would
  let any client that variable trusts claim to be loopback. Here proxy-header handling is
  off whatever the environment says: `request.client` is the TCP peer, and the approvals
  API's loopback gate (`authz.approvals.admin`) reads only that.
- **A deadline for reading each request** (`REQUEST_READ_SECONDS`): uvicorn has none, so a
  client that sends half a request head (or half a body, or nothing at all) would hold a
  connection open for as long as it likes. `DeadlineH11Protocol` closes a connection whose
  request is not completely received within the deadline, counted from the connection (or
  from the first byte of the next request on a kept-alive one); more bytes do not extend it.
  Idle kept-alive connections are closed by uvicorn's own keep-alive timeout.
- **No encoded slashes.** uvicorn decodes `%2F` into `/` before routing, so
  `/approvals%2F<id>%2Fapprove` would reach `/approvals/<id>/approve` while a proxy or mesh
  rule written on raw paths sees another path. `RefuseEncodedSlashes` answers 404 to any
  path whose raw bytes contain `%2F` or `%5C` (any case), before the app sees it.

`admin_config(app, host=..., port=...)` builds the uvicorn configuration with all three.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, Final

import h11
import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "REQUEST_READ_SECONDS",
    "DeadlineH11Protocol",
    "RefuseEncodedSlashes",
    "admin_config",
    "has_encoded_separator",
]

REQUEST_READ_SECONDS: Final = 8.0
"""How long a client has to send one whole request (head and body) to the admin listener."""

_ENCODED_SEPARATOR = re.compile(rb"%(2f|5c)", re.IGNORECASE)
_READING = (h11.IDLE, h11.SEND_BODY)
"""The client's h11 states while its request is not completely received."""


def has_encoded_separator(raw_path: bytes) -> bool:
    """Whether a raw request path contains an encoded slash or backslash (any case)."""
    return _ENCODED_SEPARATOR.search(raw_path) is not None


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving each request completely."""

    read_seconds: float = REQUEST_READ_SECONDS
    _read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that sends nothing is closed too

    def data_received(self, data: bytes) -> None:
        if self._read_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        self._received_so_far()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # a pipelined request already buffered has started: its deadline runs from now
        if self._read_deadline is None and self.conn.trailing_data[0]:
            self._arm()
        self._received_so_far()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    @property
    def reading_request(self) -> bool:
        """True while the deadline runs: a request has begun and is not completely received."""
        return self._read_deadline is not None

    def _received_so_far(self) -> None:
        if self.conn.their_state not in _READING:
            self._disarm()  # received completely (or the connection is ending anyway)

    def _arm(self) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(self.read_seconds, self._expired)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _expired(self) -> None:
        self._read_deadline = None
        if self.conn.their_state in _READING and not self.transport.is_closing():
            self.transport.close()


class RefuseEncodedSlashes:
    """ASGI middleware: 404 for a path whose raw bytes contain `%2F` or `%5C` (any case)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path")
            if not isinstance(raw_path, bytes):
                raw_path = str(scope.get("path", "")).encode("utf-8")
            if has_encoded_separator(raw_path):
                response = JSONResponse(
                    {"error": "not found: encoded slashes (%2F, %5C) are not accepted in paths"},
                    status_code=404,
                    headers={"Cache-Control": "no-store"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def admin_config(app: ASGIApp, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration of the admin listener: the socket peer is the client, each
    request must arrive within `REQUEST_READ_SECONDS`, encoded slashes are 404."""
    return uvicorn.Config(
        RefuseEncodedSlashes(app),
        host=host,
        port=port,
        http=DeadlineH11Protocol,
        proxy_headers=False,
        forwarded_allow_ips=[],
        server_header=False,
        log_level="warning",
        access_log=False,
        lifespan="off",
        **options,
    )
