"""The OAuth tests' local issuer site: a real http.server in a thread serving the
metadata and JWKS documents a test writes (static JSON, not an authorization server)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.unit.oauth.keys import SigningKey, jwks


@dataclass
class Site:
    """What the local server answers: path → (status, JSON), and the hits per path."""

    url: str
    documents: dict[str, tuple[int, Any]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: SigningKey, issuer: str | None = None) -> None:
        self.documents["/.well-known/openid-configuration"] = (
            200,
            {"issuer": issuer or self.url, "jwks_uri": f"{self.url}/jwks"},
        )
        self.documents["/jwks"] = (200, jwks(*keys))


@pytest.fixture
def site() -> Iterator[Site]:
    holder: list[Site] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            current = holder[0]
            with current.lock:
                current.hits[self.path] += 1
                status, body = current.documents.get(self.path, (404, {"error": "not found"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Site(f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
