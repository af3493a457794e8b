"""A test-only MCP server (the SDK's `MCPServer`): one tool with int, bool, list and object
parameters that records what it received, typed, after the SDK validated the arguments.

The coercion tests read this record as ground truth: it shows whether the tool ran, and
with which Python values, when the gateway let a call through.

    python -m tests.e2e.typed_upstream --port N --record FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server import MCPServer

from imagegen_upstream.cli import UpstreamServer
from imagegen_upstream.server import build_app
from imagegen_upstream.settings import from_env

TOOL = "typed.probe"


def build_server(record: Path) -> MCPServer:
    server: MCPServer = MCPServer("typed-probe")
    lock = threading.Lock()

    async def probe(
        amount: int = 0,
        flag: bool = False,
        tags: list[str] | None = None,
        opts: dict[str, Any] | None = None,
    ) -> str:
        received = {"amount": amount, "flag": flag, "tags": tags, "opts": opts}
        line = json.dumps(
            {
                "tool": TOOL,
                "received": received,
                "types": {name: type(value).__name__ for name, value in received.items()},
            }
        )
        with lock, record.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return "ran"

    server.add_tool(probe, name=TOOL, description="Records its typed arguments.")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="typed-upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)
    settings = from_env(host=args.host, port=args.port)
    app = build_app(settings, build_server(args.record))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    UpstreamServer(config, settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
