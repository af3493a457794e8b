"""A test-only MCP server (the SDK's `MCPServer`) with resources, resource templates, prompts,
a completion handler, resource subscriptions and two tools, that records what it served.

The content-policy tests read the record as ground truth: it shows what the server actually
read, rendered or answered when the gateway let a request through, with the URI or name and
the arguments exactly as the SDK passed them to the handler, and the file a templated
resource really resolved to.

    python -m tests.e2e.content_upstream --port N --record FILE --data DIR [--json-response]
        [--bulk N]

What it serves:
- static resources `docs://guide`, `file:///data/report.txt`, `secret://db/password`;
- templates `file:///data/{name}` and `notes://{+path}`, read from files under DIR the way
  the SDK recommends (`mcp.shared.path_security.safe_join`: dot segments resolve, escapes
  out of the root are refused), `users://{id}/profile` and `logs://{day}`;
- prompts `summarize(topic, style)`, `internal()`, `announce(audience, note)`;
- completions for any prompt or template argument, `resources/subscribe` and
  `resources/unsubscribe`, and the tools `echo(text)` and `wipe()`;
- with `--bulk N`, N more static resources `bulk://<i>`, each with a 40,000-character
  description (30 make a `resources/list` answer of about 1.2 MB).

Record lines (JSON, one per served request):
    {"kind": "resource", "uri": URI}                        a static resource
    {"kind": "resource", "template": T, "args": {...}, "served": RELATIVE PATH or null}
    {"kind": "prompt", "name": N, "args": {...}}
    {"kind": "completion", "ref": {...}, "argument": {...}}
    {"kind": "subscribe" | "unsubscribe", "uri": URI}
    {"kind": "tool", "name": N, "args": {...}}
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
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.shared.path_security import PathEscapeError, safe_join
from mcp_types import (
    CompleteRequestParams,
    CompleteResult,
    Completion,
    EmptyResult,
    SubscribeRequestParams,
    UnsubscribeRequestParams,
)

from imagegen_upstream.cli import UpstreamServer
from imagegen_upstream.server import build_app
from imagegen_upstream.settings import from_env

__all__ = [
    "BULK_DESCRIPTION",
    "DATA_FILES",
    "NOTE_FILES",
    "PROMPTS",
    "STATIC_RESOURCES",
    "TEMPLATES",
    "TOOLS",
    "build_server",
    "main",
    "write_files",
]

STATIC_RESOURCES = ("docs://guide", "file:///data/report.txt", "secret://db/password")
TEMPLATES = ("file:///data/{name}", "users://{id}/profile", "notes://{+path}", "logs://{day}")
PROMPTS = ("summarize", "internal", "announce")
TOOLS = ("echo", "wipe")

DATA_FILES = {
    "report.txt": "quarterly report (file)",
    "public.txt": "public notice",
    "secret.txt": "the launch codes",
    "secret-keys.txt": "the signing keys",
}
"""Files under DIR/data, served by `file:///data/{name}`."""

NOTE_FILES = {
    "public/readme.txt": "read me",
    "private/plan.txt": "the private plan",
}
"""Files under DIR/notes, served by `notes://{+path}`."""


BULK_DESCRIPTION = "x" * 40_000


def write_files(root: Path) -> None:
    """Create the files the templates serve (DIR/data/..., DIR/notes/...)."""
    for folder, files in (("data", DATA_FILES), ("notes", NOTE_FILES)):
        for relative, text in files.items():
            path = root / folder / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


class Recorder:
    """Appends one JSON line per served request, written before the answer leaves."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def __call__(self, **entry: Any) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def _read_under(root: Path, relative: str) -> tuple[str, str]:
    """(text, path relative to root) of a file under root, as the SDK recommends reading it."""
    try:
        path = safe_join(root, relative)
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError, PathEscapeError) as err:
        raise ResourceError(f"no such file: {type(err).__name__}") from err
    return text, path.relative_to(root.resolve()).as_posix()


def build_server(record: Path, data: Path, bulk: int = 0) -> MCPServer:
    server: MCPServer = MCPServer("content-probe")
    recorded = Recorder(record)
    files_root = data / "data"
    notes_root = data / "notes"

    # -- static resources ------------------------------------------------------------------

    @server.resource("docs://guide", name="guide")
    async def guide() -> str:
        recorded(kind="resource", uri="docs://guide")
        return "the guide"

    @server.resource("file:///data/report.txt", name="report")
    async def report() -> str:
        recorded(kind="resource", uri="file:///data/report.txt")
        return "quarterly report (static)"

    @server.resource("secret://db/password", name="db-password")
    async def password() -> str:
        recorded(kind="resource", uri="secret://db/password")
        return "hunter2"

    async def bulk_item() -> str:
        return "bulk"

    for i in range(bulk):
        server.resource(f"bulk://{i}", name=f"bulk-{i}", description=BULK_DESCRIPTION)(bulk_item)

    # -- templates -------------------------------------------------------------------------

    @server.resource("file:///data/{name}", name="data-file")
    async def data_file(name: str) -> str:
        text, served = _read_under(files_root, name)
        recorded(
            kind="resource", template="file:///data/{name}", args={"name": name}, served=served
        )
        return text

    @server.resource("notes://{+path}", name="note")
    async def note(path: str) -> str:
        text, served = _read_under(notes_root, path)
        recorded(kind="resource", template="notes://{+path}", args={"path": path}, served=served)
        return text

    @server.resource("users://{id}/profile", name="profile")
    async def profile(id: str) -> str:
        recorded(kind="resource", template="users://{id}/profile", args={"id": id}, served=None)
        return f"profile of {id}"

    @server.resource("logs://{day}", name="log")
    async def log(day: str) -> str:
        recorded(kind="resource", template="logs://{day}", args={"day": day}, served=None)
        return f"log of {day}"

    # -- prompts ---------------------------------------------------------------------------

    @server.prompt(name="summarize", description="Summarize a topic.")
    async def summarize(topic: str, style: str = "brief") -> str:
        recorded(kind="prompt", name="summarize", args={"topic": topic, "style": style})
        return f"Summarize {topic} ({style})."

    @server.prompt(name="internal", description="Internal instructions.")
    async def internal() -> str:
        recorded(kind="prompt", name="internal", args={})
        return "internal instructions"

    @server.prompt(name="announce", description="Announce something.")
    async def announce(audience: str, note: str = "") -> str:
        recorded(kind="prompt", name="announce", args={"audience": audience, "note": note})
        return f"Announce to {audience}. {note}".strip()

    # -- completion and subscriptions --------------------------------------------------------

    async def complete(
        ctx: ServerRequestContext[Any], params: CompleteRequestParams
    ) -> CompleteResult:
        recorded(
            kind="completion",
            ref=params.ref.model_dump(mode="json", exclude_none=True),
            argument={"name": params.argument.name, "value": params.argument.value},
        )
        value = params.argument.value
        return CompleteResult(completion=Completion(values=[f"{value}-one", f"{value}-two"]))

    async def subscribe(
        ctx: ServerRequestContext[Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        recorded(kind="subscribe", uri=params.uri)
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        recorded(kind="unsubscribe", uri=params.uri)
        return EmptyResult()

    lowlevel = server._lowlevel_server  # where MCPServer.completion() registers its handler
    lowlevel.add_request_handler("completion/complete", CompleteRequestParams, complete)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    # -- tools -----------------------------------------------------------------------------

    async def echo(text: str) -> str:
        recorded(kind="tool", name="echo", args={"text": text})
        return text

    async def wipe() -> str:
        recorded(kind="tool", name="wipe", args={})
        return "wiped"

    server.add_tool(echo, name="echo", description="Echo a text.")
    server.add_tool(wipe, name="wipe", description="Wipe everything.")
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="content-upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--bulk", type=int, default=0)
    args = parser.parse_args(argv)
    write_files(args.data)
    settings = from_env(host=args.host, port=args.port, json_response=args.json_response)
    app = build_app(settings, build_server(args.record, args.data, args.bulk))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    UpstreamServer(config, settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
