"""A real HTTP receiver on loopback for webhook tests: it records every POST it gets."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

import standardwebhooks

__all__ = ["Receiver"]


class Receiver:
    """Records every POST; answers each with the next status of `statuses` (then 204).

    A POST is recorded when it arrives. While `gate` is cleared (`close_gate`), the answer
    waits until it is set again (`open_gate`), as a slow receiver would: the sender's
    deliveries pile up behind it.

    With `secret`, it verifies every POST as a Standard Webhooks receiver does
    (`standardwebhooks.Webhook(secret).verify(body, headers)`), records the outcome in
    `verified` (the payload, or the verification error's text) and answers 401 to a POST
    that fails.
    """

    def __init__(
        self, statuses: tuple[int, ...] = (), *, secret: str | bytes | None = None
    ) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.verified: list[Any] = []
        verifier = standardwebhooks.Webhook(secret) if secret is not None else None
        self.statuses = list(statuses)
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with outer.lock:
                    outer.posts.append((self.path, headers, body))
                    status = outer.statuses.pop(0) if outer.statuses else 204
                    if verifier is not None:
                        try:
                            outer.verified.append(verifier.verify(body, headers))
                        except standardwebhooks.WebhookVerificationError as exc:
                            outer.verified.append(str(exc))
                            status = 401
                outer.gate.wait(30)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals?channel=ops"

    def close_gate(self) -> None:
        """Hold every answer from now on (the POSTs are still recorded on arrival)."""
        self.gate.clear()

    def open_gate(self) -> None:
        self.gate.set()

    def payloads(self) -> list[dict[str, Any]]:
        """The JSON bodies received so far, in order of arrival."""
        with self.lock:
            bodies = [body for _, _, body in self.posts]
        return [json.loads(body) for body in bodies]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
