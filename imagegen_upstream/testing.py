"""Test support: run the upstream in a thread, and an HTTP-boundary stub of the paid APIs.

`ProviderStub` fakes only the wire of OpenAI Images (`POST /v1/images/generations`) and
Replicate predictions (`POST /v1/models/{owner}/{name}/predictions`,
`POST /v1/predictions`, `GET /v1/predictions/{id}`, `GET /files/{id}.png`), so tests run
the real provider code against `OPENAI_BASE_URL={url}/v1` and `REPLICATE_BASE_URL={url}`.
Prompt markers: `[stub:error]` → provider error, `[stub:slow]` → Replicate answers
`processing` first (exercises polling), `[stub:not-image]` → bytes that are not an image.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from imagegen_upstream.offline_gemini import OfflineGeminiServer, draw_png, start_in_thread


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` with uvicorn on a daemon thread; yields `http://host:port`."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="imagegen-upstream", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def offline_gemini(host: str = "127.0.0.1") -> Iterator[OfflineGeminiServer]:
    server = start_in_thread(host, 0)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


_PREDICTIONS = re.compile(r"^/v1/(?:models/[\w.-]+/[\w.-]+/)?predictions$")
_PREDICTION = re.compile(r"^/v1/predictions/([\w-]+)$")
_FILE = re.compile(r"^/files/([\w-]+)\.png$")


class ProviderStub(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN  # not socketserver's 5: bursts of connects

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _StubHandler)
        self.requests: list[dict[str, Any]] = []
        self.predictions: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_address[1]}"


class _StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProviderStub

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, body: Any) -> None:
        self._send(status, json.dumps(body).encode())

    def _note(self, body: Any) -> None:
        with self.server.lock:
            self.server.requests.append(
                {"method": self.command, "path": self.path, "body": body,
                 "authorization": self.headers.get("Authorization")}
            )  # fmt: skip

    def do_GET(self) -> None:
        self._note(None)
        if match := _PREDICTION.match(self.path):
            prediction = self.server.predictions.get(match.group(1))
            if prediction is None:
                self._json(404, {"detail": "Not found."})
                return
            prediction["status"] = "succeeded"
            self._json(200, prediction)
        elif match := _FILE.match(self.path):
            prompt = (
                self.server.predictions.get(match.group(1), {}).get("input", {}).get("prompt", "")
            )
            data = b"not an image" if "[stub:not-image]" in prompt else draw_png(prompt, "stub")
            self._send(200, data, "image/png")
        else:
            self._json(404, {"detail": "Not found."})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        self._note(body)
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            self._json(401, {"error": {"message": "Missing bearer token", "type": "auth"}})
        elif self.path == "/v1/images/generations":
            self._openai(body)
        elif _PREDICTIONS.match(self.path):
            self._replicate(body)
        else:
            self._json(404, {"detail": "Not found."})

    def _openai(self, body: dict[str, Any]) -> None:
        prompt = str(body.get("prompt", ""))
        if "[stub:error]" in prompt:
            self._json(400, {"error": {"message": "Your request was rejected by the stub.",
                                       "type": "invalid_request_error"}})  # fmt: skip
            return
        data = b"not an image" if "[stub:not-image]" in prompt else draw_png(prompt, "openai")
        self._json(200, {"created": int(time.time()),
                         "data": [{"b64_json": base64.b64encode(data).decode()}]})  # fmt: skip

    def _replicate(self, body: dict[str, Any]) -> None:
        inputs = body.get("input") or {}
        prompt = str(inputs.get("prompt", ""))
        if "[stub:error]" in prompt:
            self._json(422, {"title": "Invalid input", "detail": "prompt rejected by the stub"})
            return
        pred_id = f"p{next(self.server.ids)}"
        prediction = {
            "id": pred_id,
            "input": inputs,
            "status": "processing" if "[stub:slow]" in prompt else "succeeded",
            "output": f"{self.server.url}/files/{pred_id}.png",
            "error": None,
        }
        self.server.predictions[pred_id] = prediction
        self._json(201, prediction)


@contextlib.contextmanager
def provider_stub(host: str = "127.0.0.1") -> Iterator[ProviderStub]:
    server = ProviderStub(host)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="provider-stub", daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
