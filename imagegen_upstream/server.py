"""Wiring: settings → MCPServer with the four tools → Streamable HTTP ASGI app at `/mcp`.

The SDK's session manager serves both protocol eras on the same path: handshake-era
requests (`initialize`, `Mcp-Session-Id`) and 2026-07-28 stateless requests
(`server/discover`, `Mcp-Method`/`Mcp-Name`), told apart by `MCP-Protocol-Version`.
"""

from __future__ import annotations

from mcp.server import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imagegen_upstream import __version__
from imagegen_upstream.events import MemoryEventStore
from imagegen_upstream.record import ExecutionRecorder
from imagegen_upstream.settings import Settings
from imagegen_upstream.tools import ImageTools

SERVER_NAME = "imagegen-mcp-server"


def build_server(settings: Settings) -> MCPServer:
    """An `MCPServer` named like the public ImageGen server, with its four tools."""
    server: MCPServer = MCPServer(
        SERVER_NAME,
        version=__version__,
        instructions="Generate images with OpenAI, Google Imagen, Gemini or Replicate.",
        log_level=settings.log_level.upper(),  # type: ignore[arg-type]
    )
    tools = ImageTools(settings.outputs, ExecutionRecorder(settings.record_file))
    tools.register(server, drift=settings.drift)
    return server


async def healthz(request: Request) -> Response:
    """Plain HTTP liveness probe (not MCP): `GET /healthz`."""
    return JSONResponse({"status": "ok", "server": SERVER_NAME})


def build_app(settings: Settings, server: MCPServer | None = None) -> Starlette:
    """The ASGI app uvicorn serves; its lifespan runs the SDK session manager."""
    server = server or build_server(settings)
    app = server.streamable_http_app(
        streamable_http_path=settings.path,
        json_response=settings.json_response,
        stateless_http=settings.stateless_http,
        event_store=MemoryEventStore() if settings.event_store == "memory" else None,
        transport_security=settings.transport_security(),
        host=settings.host,
    )
    app.router.routes.append(Route("/healthz", healthz, methods=["GET"]))
    return app
