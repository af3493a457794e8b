"""Safe output paths: a caller's `filenameHint` never leaves the outputs folder.

Every saved image is re-encoded as PNG with Pillow, so what lands on disk is always a
real, decodable PNG whatever the provider sent (PNG, JPEG or WebP).
"""

from __future__ import annotations

import io
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_STEM_CHARS = 64
"""Longest basename kept from a hint, before the unique suffix and `.png`."""

MAX_IMAGE_BYTES = 32 * 1024 * 1024
"""Refuse to decode provider payloads larger than this."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UnsafePathError(ValueError):
    """The computed path would leave the outputs folder."""


class InvalidImageError(ValueError):
    """The provider's bytes are not an image Pillow can decode."""


@dataclass(frozen=True, slots=True)
class SavedImage:
    path: Path
    png: bytes
    width: int
    height: int

    mime_type: str = "image/png"


def sanitize_stem(hint: str | None, default: str) -> str:
    """Reduce `hint` to a short, safe basename (no separators, dots runs, controls)."""
    raw = hint or ""
    # Keep only the last path component, whichever separator the caller used.
    raw = re.split(r"[\\/]", raw)[-1]
    cleaned = _UNSAFE.sub("-", raw)
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    cleaned = cleaned.strip(".-_")[:MAX_STEM_CHARS].strip(".-_")
    if cleaned.lower().endswith(".png"):
        cleaned = cleaned[:-4].rstrip(".-_")
    return cleaned or default


def unique_output_path(outputs: Path, hint: str | None, default: str) -> Path:
    """A new `<stem>-<time>-<random>.png` path, verified to lie inside `outputs`."""
    root = outputs.resolve()
    stem = sanitize_stem(hint, default)
    suffix = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    candidate = (root / f"{stem}-{suffix}.png").resolve()
    if candidate.parent != root:
        raise UnsafePathError(f"refusing to write outside the outputs folder: {candidate}")
    return candidate


def to_png(data: bytes) -> tuple[bytes, int, int]:
    """Decode any image Pillow understands and re-encode it as PNG."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidImageError(f"image payload too large ({len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            out = io.BytesIO()
            img.save(out, format="PNG")
            return out.getvalue(), img.width, img.height
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidImageError(f"provider returned bytes that are not an image: {exc}") from exc


def save_png(outputs: Path, data: bytes, hint: str | None, default: str) -> SavedImage:
    """Re-encode `data` as PNG and write it to a fresh file under `outputs`."""
    png, width, height = to_png(data)
    outputs.mkdir(parents=True, exist_ok=True)
    path = unique_output_path(outputs, hint, default)
    # "x": never overwrite, even if the random suffix ever collided.
    with path.open("xb") as fh:
        fh.write(png)
    return SavedImage(path=path, png=png, width=width, height=height)
