"""An offline, Gemini-API-compatible HTTP endpoint for tests and demos (no network, no key check).

Point the real `google-genai` client at it with `GOOGLE_GEMINI_BASE_URL=http://H:P`.

URL layout (`{v}` is `v1`, `v1beta` or `v1alpha`; google-genai 3.3.0 uses `v1` by default):
  POST /{v}/models/{model}:generateContent  → a candidate with a text part and an
                                              `inlineData` PNG drawn from the prompt
  POST /{v}/models/{model}:predict          → Imagen-style `predictions[].bytesBase64Encoded`
  GET  /offline/requests                    → the recent requests seen (model, prompt, ...)
  GET  /healthz                             → {"status": "ok"}
  anything else                             → 404 with a Gemini-shaped error JSON
An API key must be present (`x-goog-api-key` header or `key` query parameter; any value),
else 403 PERMISSION_DENIED. A prompt containing `[offline:no-image]` gets a text-only
answer, and one containing `[offline:error]` gets a 500 INTERNAL error.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import logging
import re
import signal
import socket
import sys
import textwrap
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw, ImageFont

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
IMAGE_SIDE = 256
NO_IMAGE_MARKER = "[offline:no-image]"
ERROR_MARKER = "[offline:error]"
_ROUTE = re.compile(r"^/(v1|v1beta|v1alpha)/models/([A-Za-z0-9._-]+):(generateContent|predict)$")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "INVALID_ARGUMENT",
    500: "INTERNAL",
}


def draw_png(prompt: str, model: str, size: tuple[int, int] = (IMAGE_SIDE, IMAGE_SIDE)) -> bytes:
    """A deterministic PNG: background colour from the prompt's hash, prompt text on top."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    background = (digest[0], digest[1], digest[2])
    luminance = 0.299 * digest[0] + 0.587 * digest[1] + 0.114 * digest[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    lines = textwrap.wrap(prompt, width=max(8, size[0] // 8))[: max(1, size[1] // 16 - 2)]
    for row, line in enumerate(lines):
        draw.text((8, 8 + row * 14), line, fill=ink, font=font)
    draw.text((8, size[1] - 18), model[:40], fill=ink, font=font)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def prompt_from_contents(body: dict[str, Any]) -> str:
    """Join the text parts of a generateContent request (a string, a Content or a list)."""
    contents = body.get("contents")
    items = contents if isinstance(contents, list) else [contents]
    texts: list[str] = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            for part in item.get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return "\n".join(texts)


def prompt_from_instances(body: dict[str, Any]) -> str:
    instances = body.get("instances")
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        prompt = instances[0].get("prompt")
        return prompt if isinstance(prompt, str) else ""
    return ""


def imagen_size(aspect_ratio: Any) -> tuple[int, int]:
    match = re.fullmatch(
        r"(\d{1,2}):(\d{1,2})", aspect_ratio if isinstance(aspect_ratio, str) else ""
    )
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        return IMAGE_SIDE, IMAGE_SIDE
    w, h = int(match.group(1)), int(match.group(2))
    if w >= h:
        return IMAGE_SIDE, max(16, round(IMAGE_SIDE * h / w))
    return max(16, round(IMAGE_SIDE * w / h)), IMAGE_SIDE


class OfflineGeminiServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with Nagle disabled and a bounded log of the requests it served."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of new connections (an upstream
    # running 30 generations at once) overflows it and some clients read a reset.
    request_queue_size = socket.SOMAXCONN

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.requests: deque[dict[str, Any]] = deque(maxlen=256)
        self.lock = threading.Lock()

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def remember(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(entry)

    def recent(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OfflineGeminiServer
    server_version = "offline-gemini/1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        name = _STATUS_NAMES.get(status, HTTPStatus(status).phrase.upper().replace(" ", "_"))
        self._send_json(status, {"error": {"code": status, "message": message, "status": name}})

    def _read_json(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, "Request payload is too large.")
            return None
        raw = self.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "Invalid JSON payload received.")
            return None
        if not isinstance(body, dict):
            self._error(400, "Invalid JSON payload received. Expected an object.")
            return None
        return body

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/offline/requests":
            self._send_json(200, {"requests": self.server.recent()})
        elif _ROUTE.match(path):
            self._error(405, f"Method GET not allowed on {path}.")
        else:
            self._error(404, f"Requested entity was not found: {path}")

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        route = _ROUTE.match(parts.path)
        if not route:
            self._error(404, f"Requested entity was not found: {parts.path}")
            return
        api_version, model, method = route.groups()
        key = self.headers.get("x-goog-api-key") or parse_qs(parts.query).get("key", [""])[0]
        if not key:
            self._error(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
            return
        body = self._read_json()
        if body is None:
            return
        generate = method == "generateContent"
        prompt = prompt_from_contents(body) if generate else prompt_from_instances(body)
        self.server.remember(
            {"method": method, "api_version": api_version, "model": model, "prompt": prompt,
             "time": time.time()}
        )  # fmt: skip
        if not prompt:
            self._error(400, "* GenerateContentRequest.contents: contents is not specified")
        elif ERROR_MARKER in prompt:
            self._error(500, "An internal error has occurred (offline test trigger).")
        elif generate:
            self._send_json(200, self._generate_content(model, prompt))
        else:
            self._send_json(200, self._predict(model, prompt, body.get("parameters")))

    def _generate_content(self, model: str, prompt: str) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": f"Offline image for: {prompt[:200]}"}]
        if NO_IMAGE_MARKER not in prompt:
            png = base64.b64encode(draw_png(prompt, model)).decode("ascii")
            parts.append({"inlineData": {"mimeType": "image/png", "data": png}})
        tokens = max(1, len(prompt.split()))
        return {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {
                "promptTokenCount": tokens,
                "candidatesTokenCount": 1290,
                "totalTokenCount": tokens + 1290,
            },
            "modelVersion": model,
            "responseId": hashlib.sha256(prompt.encode()).hexdigest()[:22],
        }

    def _predict(self, model: str, prompt: str, parameters: Any) -> dict[str, Any]:
        params = parameters if isinstance(parameters, dict) else {}
        if NO_IMAGE_MARKER in prompt:
            return {"predictions": []}
        size = imagen_size(params.get("aspectRatio"))
        png = base64.b64encode(draw_png(prompt, model, size)).decode("ascii")
        return {"predictions": [{"bytesBase64Encoded": png, "mimeType": "image/png"}]}


def start_in_thread(host: str = "127.0.0.1", port: int = 0) -> OfflineGeminiServer:
    """Start a server on a daemon thread; call `.shutdown()` and `.server_close()` to stop."""
    server = OfflineGeminiServer((host, port))
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="offline-gemini", daemon=True
    )
    thread.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="offline-gemini", description="Offline Gemini-API-compatible image endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="0 picks a free port")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = start_in_thread(args.host, args.port)
    print(f"offline-gemini listening on {server.url}", flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    print("offline-gemini stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
