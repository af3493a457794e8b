"""Gemini image generation through the real `google-genai` SDK.

google-genai 3.3.0 honours `GOOGLE_GEMINI_BASE_URL` by itself (it is how the offline
endpoint is used); it calls `POST {base}/v1/models/{model}:generateContent` with the key
in the `x-goog-api-key` header (`/v1beta/...` when `GOOGLE_GENAI_API_VERSION=beta`).
"""

from __future__ import annotations

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


async def generate_gemini(prompt: str, model: str | None, tool: str) -> ProviderImage:
    key = require_env("GOOGLE_API_KEY", tool)
    model_name = gemini_model(model)
    options = genai_types.HttpOptions(timeout=int(timeout_s() * 1000))
    client = genai.Client(api_key=key, vertexai=False, http_options=options)
    try:
        response = await client.aio.models.generate_content(model=model_name, contents=prompt)
    except genai_errors.APIError as exc:
        message = " ".join(str(exc.message or exc).split())[:_ERROR_TEXT_LIMIT]
        raise ProviderError(f"Gemini API error: HTTP {exc.code}: {message}") from exc
    except Exception as exc:  # transport failures (httpx) and SDK parsing errors
        raise ProviderError(f"Gemini request failed: {type(exc).__name__}: {exc}") from exc
    finally:
        await client.aio.aclose()
        client.close()
    blob = first_inline_image(response)
    if blob is None or blob.data is None:
        reason = ""
        if response.prompt_feedback and response.prompt_feedback.block_reason:
            reason = f" (blocked: {response.prompt_feedback.block_reason})"
        raise ProviderError(f"Gemini model {model_name} returned no inline image{reason}")
    return ProviderImage(blob.data, model_name, blob.mime_type)
