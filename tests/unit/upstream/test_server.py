"""The ImageGen upstream end to end in-process: real uvicorn, real MCP SDK client (both eras),
real google-genai against the offline Gemini endpoint, httpx against a paid-API stub."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp_types import CallToolResult, ImageContent, TextContent
from PIL import Image

from imagegen_upstream import providers
from imagegen_upstream.offline_gemini import OfflineGeminiServer
from imagegen_upstream.server import build_app
from imagegen_upstream.settings import Settings
from imagegen_upstream.testing import ProviderStub, offline_gemini, provider_stub, serve_in_thread
from imagegen_upstream.tools import TOOL_NAMES

ERAS = ["legacy", "2026-07-28"]
SAVED = re.compile(r"^provider=(?P<provider>\S+) model=(?P<model>\S+) saved=(?P<path>.+)$")
PROVIDER_ENV = (
    "GOOGLE_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY", "REPLICATE_API_TOKEN",
    "GOOGLE_IMAGE_MODEL", "GOOGLE_IMAGEN_MODEL", "OPENAI_IMAGE_MODEL", "REPLICATE_MODEL",
    "GOOGLE_GENAI_API_VERSION", "GOOGLE_GENAI_USE_VERTEXAI",
)  # fmt: skip


class Upstream:
    def __init__(self, url: str, outputs: Path, record: Path) -> None:
        self.url = url
        self.mcp = f"{url}/mcp"
        self.outputs = outputs
        self.record = record

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture(scope="module")
def gemini() -> Iterator[OfflineGeminiServer]:
    with offline_gemini() as server:
        yield server


@pytest.fixture(scope="module")
def stub() -> Iterator[ProviderStub]:
    with provider_stub() as server:
        yield server


def _start(tmp: Path, **kwargs: Any) -> Iterator[Upstream]:
    settings = Settings(outputs=tmp / "outputs", record_file=tmp / "record.jsonl", **kwargs)
    with serve_in_thread(build_app(settings)) as url:
        yield Upstream(url, settings.outputs, tmp / "record.jsonl")


@pytest.fixture(scope="module")
def sse_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    yield from _start(tmp_path_factory.mktemp("sse"))


@pytest.fixture(scope="module")
def json_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    yield from _start(
        tmp_path_factory.mktemp("json"), json_response=True, allowed_hosts=("envoy.test",)
    )


@pytest.fixture(params=["sse", "json"])
def upstream(request: pytest.FixtureRequest) -> Upstream:
    return request.getfixturevalue(f"{request.param}_upstream")  # type: ignore[no-any-return]


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def provider_env(
    monkeypatch: pytest.MonkeyPatch, gemini: OfflineGeminiServer, stub: ProviderStub
) -> None:
    """Keys present, every base URL on loopback; tests delete what they need absent."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "offline-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8-test")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.url)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{stub.url}/v1")
    monkeypatch.setenv("REPLICATE_BASE_URL", stub.url)
    monkeypatch.setattr(providers, "REPLICATE_POLL_INTERVAL_S", 0.01)


async def call(url: str, era: str, tool: str, args: dict[str, Any]) -> CallToolResult:
    async with Client(url, mode=era) as client:
        return await client.call_tool(tool, args)


def saved_image(result: CallToolResult, outputs: Path) -> tuple[re.Match[str], Path]:
    assert not result.is_error, result.content
    text = result.content[0]
    assert isinstance(text, TextContent)
    match = SAVED.match(text.text)
    assert match, text.text
    path = Path(match["path"])
    assert path.parent == outputs.resolve()
    assert path.name.endswith(".png")
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.width > 0
    return match, path


def error_text(result: CallToolResult) -> str:
    assert result.is_error
    text = result.content[0]
    assert isinstance(text, TextContent)
    return text.text


async def test_lists_the_four_tools(upstream: Upstream, era: str) -> None:
    async with Client(upstream.mcp, mode=era) as client:
        assert client.protocol_version == ("2025-11-25" if era == "legacy" else era)
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(TOOL_NAMES)
    gemini_props = tools["image.generate.gemini"].input_schema["properties"]
    assert set(gemini_props) == {"prompt", "model", "returnBase64", "filenameHint"}
    assert tools["image.generate.gemini"].input_schema["required"] == ["prompt"]
    for name in TOOL_NAMES:
        props = tools[name].input_schema["properties"]
        assert {"prompt", "model", "returnBase64", "filenameHint"} <= set(props)


async def test_gemini_saves_a_real_png(
    upstream: Upstream, era: str, gemini: OfflineGeminiServer
) -> None:
    result = await call(upstream.mcp, era, "image.generate.gemini", {"prompt": "a red fox"})
    match, path = saved_image(result, upstream.outputs)
    assert match["provider"] == "google(gemini)"
    assert match["model"] == "gemini-2.5-flash-image-preview"
    assert len(result.content) == 1
    with Image.open(path) as img:
        assert img.size == (256, 256)
    seen = gemini.recent()[-1]
    assert (seen["model"], seen["prompt"], seen["api_version"]) == (
        "gemini-2.5-flash-image-preview", "a red fox", "v1"
    )  # fmt: skip


async def test_gemini_return_base64_adds_an_image_part(upstream: Upstream, era: str) -> None:
    args = {"prompt": "a blue whale", "returnBase64": True}
    result = await call(upstream.mcp, era, "image.generate.gemini", args)
    _, path = saved_image(result, upstream.outputs)
    image = result.content[1]
    assert isinstance(image, ImageContent)
    assert image.mime_type == "image/png"
    assert base64.b64decode(image.data) == path.read_bytes()
    with Image.open(io.BytesIO(base64.b64decode(image.data))) as img:
        assert img.format == "PNG"


async def test_model_argument_and_env_override_reach_the_endpoint(
    sse_upstream: Upstream, era: str, gemini: OfflineGeminiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_IMAGE_MODEL", "gemini-env-model")
    result = await call(sse_upstream.mcp, era, "image.generate.gemini", {"prompt": "env"})
    assert saved_image(result, sse_upstream.outputs)[0]["model"] == "gemini-env-model"
    assert gemini.recent()[-1]["model"] == "gemini-env-model"

    args = {"prompt": "arg", "model": "gemini-arg-model"}
    result = await call(sse_upstream.mcp, era, "image.generate.gemini", args)
    assert saved_image(result, sse_upstream.outputs)[0]["model"] == "gemini-arg-model"
    assert gemini.recent()[-1]["model"] == "gemini-arg-model"


MISSING_KEYS = [
    ("image.generate.gemini", "GOOGLE_API_KEY"),
    ("image.generate.google", "GOOGLE_API_KEY"),
    ("image.generate.openai", "OPENAI_API_KEY"),
    ("image.generate.replicate", "REPLICATE_API_TOKEN"),
]


async def test_missing_key_is_a_tool_error_naming_the_variable(
    sse_upstream: Upstream, era: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GOOGLE_API_KEY", "OPENAI_API_KEY", "REPLICATE_API_TOKEN"):
        monkeypatch.delenv(name)
    sse_upstream.outputs.mkdir(parents=True, exist_ok=True)
    before = set(sse_upstream.outputs.iterdir())
    async with Client(sse_upstream.mcp, mode=era) as client:
        for tool, variable in MISSING_KEYS:
            result = await client.call_tool(tool, {"prompt": "no key"})
            assert variable in error_text(result), tool
    assert set(sse_upstream.outputs.iterdir()) == before


HOSTILE_HINTS = [
    "../../etc/passwd", "/abs/x", "..", "a/../../b", "..\\..\\win", "x\x00y\n", "é" * 500, "~root",
]  # fmt: skip


async def test_filename_hint_stays_inside_outputs(sse_upstream: Upstream, era: str) -> None:
    async with Client(sse_upstream.mcp, mode=era) as client:
        for hint in HOSTILE_HINTS:
            args = {"prompt": "hint", "filenameHint": hint}
            result = await client.call_tool("image.generate.gemini", args)
            _, path = saved_image(result, sse_upstream.outputs)
            assert path.resolve().is_relative_to(sse_upstream.outputs.resolve())
            assert len(path.name) < 100
            assert not any(c in path.name for c in "/\\\x00\n"), path.name


async def test_openai_against_the_http_stub(
    upstream: Upstream, era: str, stub: ProviderStub
) -> None:
    args = {
        "prompt": "a lighthouse",
        "size": "512x512",
        "filenameHint": "light",
        "returnBase64": True,
    }
    result = await call(upstream.mcp, era, "image.generate.openai", args)
    match, path = saved_image(result, upstream.outputs)
    assert (match["provider"], match["model"]) == ("openai", "gpt-image-1")
    assert path.name.startswith("light-")
    assert isinstance(result.content[1], ImageContent)
    sent = stub.requests[-1]
    assert sent["path"] == "/v1/images/generations"
    assert sent["authorization"] == "Bearer sk-test"
    assert sent["body"]["size"] == "512x512"
    assert sent["body"]["prompt"] == "a lighthouse"


async def test_replicate_against_the_http_stub_with_polling(
    sse_upstream: Upstream, era: str, stub: ProviderStub
) -> None:
    args = {"prompt": "a castle [stub:slow]", "model": "owner/model", "width": 640, "height": 480}
    result = await call(sse_upstream.mcp, era, "image.generate.replicate", args)
    match, _ = saved_image(result, sse_upstream.outputs)
    assert (match["provider"], match["model"]) == ("replicate", "owner/model")
    paths = [r["path"] for r in stub.requests[-3:]]
    assert paths[0] == "/v1/models/owner/model/predictions"
    assert paths[1].startswith("/v1/predictions/")
    assert paths[2].startswith("/files/")
    assert stub.requests[-3]["body"]["input"] == {
        "prompt": args["prompt"],
        "width": 640,
        "height": 480,
    }


async def test_google_imagen_against_the_offline_endpoint(
    sse_upstream: Upstream, era: str, gemini: OfflineGeminiServer
) -> None:
    args = {"prompt": "a dune", "aspectRatio": "16:9"}
    result = await call(sse_upstream.mcp, era, "image.generate.google", args)
    match, path = saved_image(result, sse_upstream.outputs)
    assert (match["provider"], match["model"]) == ("google", "imagen-4.0-generate-001")
    with Image.open(path) as img:
        assert img.width > img.height
    seen = gemini.recent()[-1]
    assert (seen["method"], seen["api_version"]) == ("predict", "v1beta")


PROVIDER_FAILURES = [
    (
        "image.generate.openai",
        "[stub:error]",
        "OpenAI API error: HTTP 400: Your request was rejected",
    ),
    ("image.generate.openai", "[stub:not-image]", "not an image"),
    ("image.generate.replicate", "[stub:error]", "Replicate API error: HTTP 422"),
    ("image.generate.gemini", "[offline:error]", "Gemini API error: HTTP 500"),
    ("image.generate.gemini", "[offline:no-image]", "returned no inline image"),
    ("image.generate.google", "[offline:no-image]", "Google Imagen returned no image"),
]
BAD_MODELS = [
    ("image.generate.gemini", "../../v1/x"),
    ("image.generate.google", "a/b"),
    ("image.generate.replicate", "owner/../../x"),
]


async def test_provider_failures_are_clear_tool_errors(sse_upstream: Upstream, era: str) -> None:
    async with Client(sse_upstream.mcp, mode=era) as client:
        for tool, prompt, expected in PROVIDER_FAILURES:
            result = await client.call_tool(tool, {"prompt": prompt})
            assert expected in error_text(result), (tool, prompt)
        for tool, model in BAD_MODELS:
            result = await client.call_tool(tool, {"prompt": "p", "model": model})
            assert "model" in error_text(result), (tool, model)


async def test_unreachable_provider_is_a_tool_error(
    sse_upstream: Upstream, era: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")
    for tool, expected in [
        ("image.generate.openai", "OpenAI request failed: ConnectError"),
        ("image.generate.gemini", "Gemini request failed"),
    ]:
        assert expected in error_text(await call(sse_upstream.mcp, era, tool, {"prompt": "x"}))


async def test_record_file_gets_one_line_per_execution(sse_upstream: Upstream, era: str) -> None:
    before = len(sse_upstream.records())
    async with Client(sse_upstream.mcp, mode=era) as client:
        await client.list_tools()
        await client.call_tool("image.generate.gemini", {"prompt": "rec", "returnBase64": False})
        await client.call_tool("image.generate.openai", {"prompt": "rec", "size": "256x256"})
        invalid = await client.call_tool("image.generate.gemini", {"model": "no prompt"})
    assert invalid.is_error
    lines = sse_upstream.records()[before:]
    assert [line["tool"] for line in lines] == ["image.generate.gemini", "image.generate.openai"]
    assert lines[0]["arg_keys"] == ["prompt", "returnBase64"]
    assert lines[1]["arg_keys"] == ["prompt", "size"]
    assert lines[0]["protocol_version"] == ("2025-11-25" if era == "legacy" else era)
    assert all(isinstance(line["time"], float) for line in lines)


ERA_HEADERS = {
    "legacy": {},
    "2026-07-28": {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"},
}


def _raw_post(url: str, era: str, host: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream", **ERA_HEADERS[era]}
    if host is not None:
        headers["Host"] = host
    body: dict[str, Any]
    if era == "legacy":
        body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    else:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}}  # fmt: skip
    response = httpx.post(url, json=body, headers=headers, timeout=10)
    if session := response.headers.get("mcp-session-id"):
        # Close the handshake-era session so the module's server shuts down promptly.
        closed = httpx.delete(url, headers={"Mcp-Session-Id": session, "Host": "localhost"})
        assert closed.status_code == 200
    return response


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.2:1"])
def test_unknown_host_is_rejected_in_both_eras(upstream: Upstream, era: str, host: str) -> None:
    response = _raw_post(upstream.mcp, era, host)
    assert response.status_code == 421
    assert "Invalid Host" in response.text


@pytest.mark.parametrize("host", ["localhost", "localhost:10000", "127.0.0.1:80", "[::1]:8080"])
def test_loopback_hosts_are_accepted(sse_upstream: Upstream, era: str, host: str) -> None:
    assert _raw_post(sse_upstream.mcp, era, host).status_code == 200


@pytest.mark.parametrize("host", ["envoy.test", "envoy.test:10000"])
def test_configured_host_is_accepted(json_upstream: Upstream, era: str, host: str) -> None:
    response = _raw_post(json_upstream.mcp, era, host)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")


def test_wildcard_disables_the_host_check(tmp_path: Path) -> None:
    for upstream in _start(tmp_path, allowed_hosts=("*",)):
        for era in ERAS:
            assert _raw_post(upstream.mcp, era, "anything.example:1").status_code == 200


def test_sse_mode_answers_with_an_event_stream(sse_upstream: Upstream) -> None:
    response = _raw_post(sse_upstream.mcp, "legacy", None)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["mcp-session-id"]
