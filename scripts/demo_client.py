"""A real MCP client (the `mcp` SDK) that calls a tool through the gateway.

    .venv/bin/python scripts/demo_client.py --url http://127.0.0.1:10000/mcp \
        --token mcp-demo-limited-token --calls 4 --prompt "a lighthouse at dusk"
    .venv/bin/python scripts/demo_client.py --token mcp-demo-artist-token \
        --prompt "a logo for a coffee shop" --wait-approval 300
"""

from __future__ import annotations

import argparse
import asyncio
import json

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent

from authz.devstack.demo import running_demo_url

HELD = "[APPROVAL REQUIRED]"
RETRY_SECONDS = 2.0


async def run(args: argparse.Namespace) -> int:
    headers = {"Authorization": f"Bearer {args.token}"}
    arguments = json.loads(args.arguments) if args.arguments else {}
    arguments.setdefault("prompt", args.prompt)
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        transport = streamable_http_client(args.url, http_client=http)
        async with Client(transport, mode=args.mode) as client:  # type: ignore[arg-type]
            tools = await client.list_tools()
            print("tools:", ", ".join(tool.name for tool in tools.tools))
            for index in range(args.calls):
                result = await client.call_tool(args.tool, arguments)
                text = " ".join(p.text for p in result.content if isinstance(p, TextContent))
                print(f"call {index + 1}: {'ERROR ' if result.is_error else ''}{text}")
                waited = 0.0
                while text.startswith(HELD) and waited < args.wait_approval:
                    # an agent that waits for the person: retry the identical call
                    await asyncio.sleep(RETRY_SECONDS)
                    waited += RETRY_SECONDS
                    result = await client.call_tool(args.tool, arguments)
                    text = " ".join(p.text for p in result.content if isinstance(p, TextContent))
                    if not text.startswith(HELD):
                        print(f"retry: {'ERROR ' if result.is_error else ''}{text}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--url",
        default=running_demo_url() or "http://127.0.0.1:10000/mcp",
        help="the gateway's MCP URL (default: the running demo's, else port 10000)",
    )
    parser.add_argument("--token", required=True)
    parser.add_argument("--tool", default="image.generate.gemini")
    parser.add_argument("--prompt", default="a lighthouse at dusk")
    parser.add_argument("--arguments", help="JSON object of tool arguments")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--mode", default="legacy", help="legacy or 2026-07-28")
    parser.add_argument(
        "--wait-approval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when a call is held for approval, retry it every 2 s for up to this long",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
