"""Gemini image generation through the real `google-genai` SDK.

google-genai 3.3.0 honours `GOOGLE_GEMINI_BASE_URL` by itself (it is how the offline
endpoint is used); it calls `POST {base}/v1/models/{model}:generateContent` with the key
in the `x-goog-api-key` header (`/v1beta/...` when `GOOGLE_GENAI_API_VERSION=beta`).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict

from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from imagegen_upstream.providers import (
    ProviderError,
    ProviderImage,
    env_or,
    require_env,
    timeout_s,
)

GEMINI_DEFAULT_MODEL = "gemini-2.5-flash-image-preview"
_ERROR_TEXT_LIMIT = 300
_MODEL_NAME = re.compile(r"(?:models/)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class GeminiClients:
    """Reuses a `genai.Client` per (key, base URL, timeout) within one server's event loop.

    Building a client costs about 60 ms (it creates TLS contexts and HTTP pools), and
    reuse keeps connections to the endpoint alive. Only a few entries are kept.
    """

    def __init__(self, max_size: int = 4) -> None:
        self.max_size = max_size
        self._clients: OrderedDict[tuple[str, str, int], genai.Client] = OrderedDict()

    async def get(self, api_key: str, timeout_ms: int) -> genai.Client:
        cache_key = (api_key, os.environ.get("GOOGLE_GEMINI_BASE_URL", ""), timeout_ms)
        client = self._clients.get(cache_key)
        if client is None:
            options = genai_types.HttpOptions(timeout=timeout_ms)
            client = genai.Client(api_key=api_key, vertexai=False, http_options=options)
            self._clients[cache_key] = client
        self._clients.move_to_end(cache_key)
        while len(self._clients) > self.max_size:
            _, old = self._clients.popitem(last=False)
            await old.aio.aclose()
            old.close()
        return client


def gemini_model(requested: str | None) -> str:
    """The `model` argument, else `GOOGLE_IMAGE_MODEL`, else the default."""
    return requested or env_or("GOOGLE_IMAGE_MODEL", GEMINI_DEFAULT_MODEL)


def first_inline_image(response: genai_types.GenerateContentResponse) -> genai_types.Blob | None:
    for candidate in response.candidates or ():
        content = candidate.content
        for part in (content.parts if content else None) or ():
            blob = part.inline_data
            if blob is not None and blob.data:
                return blob
    return None


async def generate_gemini(
    prompt: str, model: str | None, tool: str, clients: GeminiClients
) -> ProviderImage:
    key = require_env("GOOGLE_API_KEY", tool)
    model_name = gemini_model(model)
    if not _MODEL_NAME.fullmatch(model_name):
        raise ProviderError(f"invalid Gemini model name {model_name!r}")
    client = await clients.get(key, int(timeout_s() * 1000))
    try:
        response = await client.aio.models.generate_content(model=model_name, contents=prompt)
    except genai_errors.APIError as exc:
        message = " ".join(str(exc.message or exc).split())[:_ERROR_TEXT_LIMIT]
        raise ProviderError(f"Gemini API error: HTTP {exc.code}: {message}") from exc
    except Exception as exc:  # transport failures (httpx) and SDK parsing errors
        raise ProviderError(f"Gemini request failed: {type(exc).__name__}: {exc}") from exc
    blob = first_inline_image(response)
    if blob is None or blob.data is None:
        reason = ""
        if response.prompt_feedback and response.prompt_feedback.block_reason:
            reason = f" (blocked: {response.prompt_feedback.block_reason})"
        raise ProviderError(f"Gemini model {model_name} returned no inline image{reason}")
    return ProviderImage(blob.data, model_name, blob.mime_type)
