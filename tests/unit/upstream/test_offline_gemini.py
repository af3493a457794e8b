"""The offline Gemini endpoint: wire shape, auth, 404s, and the real google-genai client."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from PIL import Image

from imagegen_upstream.gemini import first_inline_image
from imagegen_upstream.offline_gemini import OfflineGeminiServer, draw_png
from imagegen_upstream.testing import offline_gemini

BODY = {"contents": [{"role": "user", "parts": [{"text": "a green cube"}]}]}


@pytest.fixture(scope="module")
def server() -> Iterator[OfflineGeminiServer]:
    with offline_gemini() as srv:
        yield srv


@pytest.mark.parametrize("version", ["v1", "v1beta"])
def test_generate_content_returns_text_and_inline_png(
    server: OfflineGeminiServer, version: str
) -> None:
    url = f"{server.url}/{version}/models/gemini-x:generateContent"
    response = httpx.post(url, json=BODY, headers={"x-goog-api-key": "any"})
    assert response.status_code == 200
    parts = response.json()["candidates"][0]["content"]["parts"]
    assert "a green cube" in parts[0]["text"]
    blob = parts[1]["inlineData"]
    assert blob["mimeType"] == "image/png"
    with Image.open(io.BytesIO(base64.b64decode(blob["data"]))) as img:
        assert (img.format, img.size) == ("PNG", (256, 256))
    assert server.recent()[-1]["model"] == "gemini-x"
    assert server.recent()[-1]["api_version"] == version


def test_key_may_come_as_query_parameter(server: OfflineGeminiServer) -> None:
    url = f"{server.url}/v1beta/models/m:generateContent?key=abc"
    assert httpx.post(url, json=BODY).status_code == 200


def test_missing_key_is_a_gemini_shaped_403(server: OfflineGeminiServer) -> None:
    response = httpx.post(f"{server.url}/v1/models/m:generateContent", json=BODY)
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (403, "PERMISSION_DENIED")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/m:generateContent"),
        ("GET", "/nothing"),
        ("POST", "/v1/models/m:stream"),
    ],
)
def test_unknown_paths_are_404_json(server: OfflineGeminiServer, method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}{path}", headers={"x-goog-api-key": "k"})
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


def test_bad_json_is_400(server: OfflineGeminiServer) -> None:
    response = httpx.post(
        f"{server.url}/v1/models/m:generateContent",
        content=b"{nope",
        headers={"x-goog-api-key": "k", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_predict_returns_imagen_predictions(server: OfflineGeminiServer) -> None:
    body = {"instances": [{"prompt": "tall"}], "parameters": {"aspectRatio": "9:16"}}
    response = httpx.post(
        f"{server.url}/v1beta/models/imagen-x:predict", json=body, headers={"x-goog-api-key": "k"}
    )
    prediction = response.json()["predictions"][0]
    with Image.open(io.BytesIO(base64.b64decode(prediction["bytesBase64Encoded"]))) as img:
        assert img.height == 256 and img.width < img.height


def test_images_are_deterministic_per_prompt() -> None:
    assert draw_png("same", "m") == draw_png("same", "m")
    assert draw_png("same", "m") != draw_png("other", "m")


def test_real_genai_client_via_base_url_env(
    server: OfflineGeminiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    client = genai.Client(api_key="offline", vertexai=False)
    response = client.models.generate_content(model="gemini-2.5-flash-image-preview", contents="hi")
    blob = first_inline_image(response)
    assert blob is not None and blob.mime_type == "image/png"
    assert (blob.data or b"").startswith(b"\x89PNG")
    seen = server.recent()[-1]
    assert (seen["model"], seen["prompt"]) == ("gemini-2.5-flash-image-preview", "hi")

    with pytest.raises(genai_errors.ServerError) as info:
        client.models.generate_content(model="m", contents="boom [offline:error]")
    assert info.value.code == 500
    client.close()


async def test_a_burst_of_new_connections_is_served_in_full(server: OfflineGeminiServer) -> None:
    # An upstream running many generations at once opens that many connections together;
    # socketserver's default listen backlog (5) would reset some of them.
    url = f"{server.url}/v1beta/models/gemini-x:generateContent"

    async def one(client: httpx.AsyncClient) -> int:
        response = await client.post(url, json=BODY, headers={"x-goog-api-key": "any"})
        return response.status_code

    for _ in range(3):
        async with httpx.AsyncClient(timeout=60) as client:
            statuses = await asyncio.gather(
                *(one(client) for _ in range(80)), return_exceptions=True
            )
        assert [s for s in statuses if s != 200] == []
