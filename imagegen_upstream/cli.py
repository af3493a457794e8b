"""`imagegen-upstream`: serve the ImageGen MCP server over Streamable HTTP with uvicorn.

Prints one `imagegen-upstream ready url=...` line once it accepts connections (with the
real port when `--port 0`), and stops gracefully with exit code 0 on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import uvicorn

from imagegen_upstream import __version__
from imagegen_upstream.server import build_app
from imagegen_upstream.settings import (
    ENV_ALLOWED_HOSTS,
    ENV_EVENT_STORE,
    ENV_RECORD_FILE,
    EVENT_STORES,
    Settings,
    from_env,
    split_csv,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="imagegen-upstream", description="ImageGen MCP server (Streamable HTTP at /mcp)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--outputs", type=Path, help="folder for saved images (default: outputs)")
    parser.add_argument(
        "--json-response", action="store_true", help="answer POSTs with JSON instead of SSE"
    )
    parser.add_argument(
        "--stateless-http",
        action="store_true",
        help="handshake era without Mcp-Session-Id tracking (each POST stands alone)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help=f"extra Host header value to accept (repeatable, comma separated; '*' disables "
        f"the check); added to {ENV_ALLOWED_HOSTS}",
    )
    parser.add_argument("--record", type=Path, help=f"execution record file ({ENV_RECORD_FILE})")
    parser.add_argument(
        "--event-store",
        choices=EVENT_STORES,
        help=f"keep sent SSE events for resuming with Last-Event-ID ({ENV_EVENT_STORE}; "
        "default none)",
    )
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)

    base = from_env()
    extra_hosts = tuple(h for value in args.allowed_host for h in split_csv(value))
    return from_env(
        host=args.host,
        port=args.port,
        outputs=args.outputs,
        json_response=args.json_response,
        stateless_http=args.stateless_http,
        allowed_hosts=(*base.allowed_hosts, *extra_hosts),
        record_file=args.record,
        log_level=args.log_level,
        event_store=args.event_store,
    )


class UpstreamServer(uvicorn.Server):
    """uvicorn.Server that announces readiness and exits cleanly on SIGTERM/SIGINT.

    uvicorn re-raises a captured signal after its graceful shutdown (so the process dies
    by that signal); here the signal only requests the shutdown and the exit code stays 0.
    """

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self.settings = settings

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self.should_exit and signum == signal.SIGINT:
                self.force_exit = True
            self.should_exit = True

        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, on_signal) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(ready_line(self.settings, self.bound_port()), flush=True)

    def bound_port(self) -> int:
        for server in getattr(self, "servers", []):
            for sock in server.sockets or ():
                return int(sock.getsockname()[1])
        return self.settings.port


def ready_line(settings: Settings, port: int) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    mode = "json" if settings.json_response else "sse"
    hosts = "*" if settings.host_check_disabled else ",".join(("loopback", *settings.allowed_hosts))
    record = settings.record_file or "-"
    return (
        f"imagegen-upstream ready url=http://{host}:{port}{settings.path} mode={mode} "
        f"outputs={settings.outputs.resolve()} allowed_hosts={hosts} record={record} "
        f"event_store={settings.event_store}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.outputs.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = UpstreamServer(config, settings)
    server.run()
    print("imagegen-upstream stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
