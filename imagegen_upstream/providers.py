"""Paid image APIs over plain HTTP (httpx): OpenAI Images, Google Imagen, Replicate.

Credentials and base URLs are read from the environment on every call, so keys never
sit in the server's settings object or its logs, and tests can point a base URL at a
local stub. Every failure surfaces as `ProviderError` with a message fit for a caller.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

DEFAULT_TIMEOUT_S = 120.0
MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024
_ERROR_TEXT_LIMIT = 300

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-image-1"
GOOGLE_DEFAULT_BASE = "https://generativelanguage.googleapis.com"
IMAGEN_DEFAULT_MODEL = "imagen-4.0-generate-001"
IMAGEN_API_VERSION = "v1beta"
REPLICATE_DEFAULT_BASE = "https://api.replicate.com"
REPLICATE_DEFAULT_MODEL = "black-forest-labs/flux-1.1-pro"
REPLICATE_POLL_INTERVAL_S = 1.0

IMAGEN_ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
_MODEL_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_REPLICATE_MODEL = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(?::[0-9a-fA-F]{16,128})?$")


class ProviderError(Exception):
    """A provider call failed; the message is safe to show to the MCP caller."""


@dataclass(frozen=True, slots=True)
class ProviderImage:
    data: bytes
    model: str
    mime_type: str | None = None


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """The provider-neutral subset of a tool call's arguments."""

    prompt: str
    model: str | None = None
    size: str | None = None
    width: int | None = None
    height: int | None = None
    aspect_ratio: str | None = None
    format: str | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None


def require_env(name: str, tool: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ProviderError(f"{name} is not set: {tool} needs it to call the provider")
    return value


def env_or(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def timeout_s() -> float:
    try:
        return float(os.environ.get("IMAGEGEN_HTTP_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def dimensions(req: ImageRequest, default: tuple[int, int] | None) -> tuple[int, int] | None:
    """`size` ("WxH") wins over `width`/`height`; otherwise `default`."""
    if req.size:
        match = re.fullmatch(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*", req.size)
        if not match:
            raise ProviderError(f"size must look like 1024x1024, got {req.size!r}")
        return int(match.group(1)), int(match.group(2))
    if req.width and req.height:
        return req.width, req.height
    return default


def nearest_aspect_ratio(width: int, height: int, choices: tuple[str, ...]) -> str:
    def distance(choice: str) -> float:
        w, h = (int(x) for x in choice.split(":"))
        return abs(math.log(width / height) - math.log(w / h))

    return min(choices, key=distance)


def _describe_http_error(provider: str, response: httpx.Response) -> str:
    detail = ""
    try:
        body: Any = response.json()
    except ValueError:
        detail = response.text
    else:
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict):
                detail = str(err.get("message") or err)
            elif err:
                detail = str(err)
            else:
                detail = str(body.get("detail") or body.get("title") or body)
    detail = " ".join(detail.split())[:_ERROR_TEXT_LIMIT]
    return f"{provider} API error: HTTP {response.status_code}" + (f": {detail}" if detail else "")


async def _send(
    client: httpx.AsyncClient, provider: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        raise ProviderError(f"{provider} request failed: {type(exc).__name__}: {exc}") from exc
    if response.is_error:
        raise ProviderError(_describe_http_error(provider, response))
    return response


def _json(provider: str, response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ProviderError(f"{provider} returned a non-JSON response") from exc
    if not isinstance(body, dict):
        raise ProviderError(f"{provider} returned an unexpected JSON document")
    return body


def _b64(provider: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise ProviderError(f"{provider} returned no image data")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProviderError(f"{provider} returned invalid base64 image data") from exc


async def _download(
    client: httpx.AsyncClient, provider: str, url: str, auth_host: str, token: str
) -> bytes:
    """Fetch an output URL (or decode a data: URI); the token goes only to the API's own host."""
    if url.startswith("data:"):
        _, _, payload = url.partition(",")
        return _b64(provider, payload)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ProviderError(f"{provider} returned an unsupported image URL scheme")
    headers = {"Authorization": f"Bearer {token}"} if parts.netloc == auth_host else {}
    response = await _send(client, provider, "GET", url, headers=headers, follow_redirects=True)
    if len(response.content) > MAX_DOWNLOAD_BYTES:
        raise ProviderError(f"{provider} image is larger than {MAX_DOWNLOAD_BYTES} bytes")
    return response.content


async def generate_openai(req: ImageRequest, tool: str) -> ProviderImage:
    """POST {OPENAI_BASE_URL}/images/generations (OpenAI Images API)."""
    key = require_env("OPENAI_API_KEY", tool)
    base = env_or("OPENAI_BASE_URL", OPENAI_DEFAULT_BASE).rstrip("/")
    model = req.model or env_or("OPENAI_IMAGE_MODEL", OPENAI_DEFAULT_MODEL)
    width, height = dimensions(req, (1024, 1024)) or (1024, 1024)
    prompt = req.prompt
    if req.negative_prompt:
        prompt = f"{prompt}\n\nAvoid: {req.negative_prompt}"
    payload: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "n": 1,
        "size": f"{width}x{height}",
    }
    if req.quality:
        payload["quality"] = req.quality
    if model.startswith("dall-e"):
        payload["response_format"] = "b64_json"
        if req.style:
            payload["style"] = req.style
    else:
        if req.background:
            payload["background"] = req.background
        if req.format and req.format != "png":
            payload["output_format"] = "jpeg" if req.format in ("jpg", "jpeg") else req.format
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=timeout_s()) as client:
        response = await _send(
            client, "OpenAI", "POST", f"{base}/images/generations", json=payload, headers=headers
        )
        data = _json("OpenAI", response).get("data")
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        if first.get("b64_json"):
            return ProviderImage(_b64("OpenAI", first["b64_json"]), model)
        if isinstance(first.get("url"), str):
            host = urlsplit(base).netloc
            return ProviderImage(await _download(client, "OpenAI", first["url"], host, key), model)
    raise ProviderError("OpenAI returned no image data")


async def generate_imagen(req: ImageRequest, tool: str) -> ProviderImage:
    """POST {GOOGLE_GEMINI_BASE_URL}/v1beta/models/{model}:predict (Imagen on the Gemini API)."""
    key = require_env("GOOGLE_API_KEY", tool)
    base = env_or("GOOGLE_GEMINI_BASE_URL", GOOGLE_DEFAULT_BASE).rstrip("/")
    model = (req.model or env_or("GOOGLE_IMAGEN_MODEL", IMAGEN_DEFAULT_MODEL)).removeprefix(
        "models/"
    )
    if not _MODEL_SEGMENT.match(model):
        raise ProviderError(f"invalid Imagen model name {model!r}")
    parameters: dict[str, Any] = {"sampleCount": 1}
    size = dimensions(req, None)
    if req.aspect_ratio:
        parameters["aspectRatio"] = req.aspect_ratio
    elif size:
        parameters["aspectRatio"] = nearest_aspect_ratio(*size, IMAGEN_ASPECT_RATIOS)
    if req.format in ("jpg", "jpeg"):
        parameters["outputOptions"] = {"mimeType": "image/jpeg"}
    payload = {"instances": [{"prompt": req.prompt}], "parameters": parameters}
    url = f"{base}/{IMAGEN_API_VERSION}/models/{model}:predict"
    async with httpx.AsyncClient(timeout=timeout_s()) as client:
        response = await _send(
            client, "Google Imagen", "POST", url, json=payload, headers={"x-goog-api-key": key}
        )
    predictions = _json("Google Imagen", response).get("predictions")
    if not isinstance(predictions, list) or not predictions or not isinstance(predictions[0], dict):
        raise ProviderError("Google Imagen returned no image (the prompt may have been filtered)")
    first = predictions[0]
    data = _b64("Google Imagen", first.get("bytesBase64Encoded"))
    return ProviderImage(data, model, first.get("mimeType"))


def _replicate_output_url(output: Any) -> str:
    if isinstance(output, list) and output:
        output = output[0]
    if isinstance(output, str) and output:
        return output
    raise ProviderError("Replicate prediction succeeded but returned no image output")


async def generate_replicate(req: ImageRequest, tool: str) -> ProviderImage:
    """Create a Replicate prediction (Prefer: wait), poll until done, download the output."""
    token = require_env("REPLICATE_API_TOKEN", tool)
    base = env_or("REPLICATE_BASE_URL", REPLICATE_DEFAULT_BASE).rstrip("/")
    model = req.model or env_or("REPLICATE_MODEL", REPLICATE_DEFAULT_MODEL)
    if not _REPLICATE_MODEL.match(model):
        raise ProviderError(
            f"Replicate model must be owner/name or owner/name:version, got {model!r}"
        )
    inputs: dict[str, Any] = {"prompt": req.prompt}
    size = dimensions(req, None)
    if req.aspect_ratio:
        inputs["aspect_ratio"] = req.aspect_ratio
    elif size:
        inputs["width"], inputs["height"] = size
    if req.format:
        inputs["output_format"] = "jpg" if req.format == "jpeg" else req.format
    if req.seed is not None:
        inputs["seed"] = req.seed
    if req.negative_prompt:
        inputs["negative_prompt"] = req.negative_prompt
    name, _, version = model.partition(":")
    if version:
        url, payload = f"{base}/v1/predictions", {"version": version, "input": inputs}
    else:
        url, payload = f"{base}/v1/models/{name}/predictions", {"input": inputs}
    headers = {"Authorization": f"Bearer {token}", "Prefer": "wait=60"}
    deadline = time.monotonic() + timeout_s()
    async with httpx.AsyncClient(timeout=timeout_s()) as client:
        prediction = _json(
            "Replicate",
            await _send(client, "Replicate", "POST", url, json=payload, headers=headers),
        )
        while prediction.get("status") not in ("succeeded", "failed", "canceled"):
            pred_id = str(prediction.get("id") or "")
            if not _MODEL_SEGMENT.match(pred_id):
                raise ProviderError("Replicate returned a prediction without a usable id")
            if time.monotonic() > deadline:
                raise ProviderError(f"Replicate prediction {pred_id} did not finish in time")
            await anyio.sleep(REPLICATE_POLL_INTERVAL_S)
            poll = await _send(
                client, "Replicate", "GET", f"{base}/v1/predictions/{pred_id}", headers=headers
            )
            prediction = _json("Replicate", poll)
        if prediction.get("status") != "succeeded":
            error = " ".join(str(prediction.get("error") or "no error given").split())
            raise ProviderError(
                f"Replicate prediction {prediction.get('status')}: {error[:_ERROR_TEXT_LIMIT]}"
            )
        output_url = _replicate_output_url(prediction.get("output"))
        data = await _download(client, "Replicate", output_url, urlsplit(base).netloc, token)
    return ProviderImage(data, model)
