"""Safe output paths and PNG normalisation (pure, no server)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from imagegen_upstream.files import (
    MAX_STEM_CHARS,
    InvalidImageError,
    sanitize_stem,
    save_png,
    unique_output_path,
)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (None, "img"),
        ("", "img"),
        ("sunset", "sunset"),
        ("../../etc/passwd", "passwd"),
        ("/abs/x", "x"),
        ("..", "img"),
        ("a/../..", "img"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("x\x00y\nz", "x-y-z"),
        ("My Cat!.png", "My-Cat"),
        ("...hidden", "hidden"),
        ("a..b", "a.b"),
        ("ünï cödé", "n-c-d"),
    ],
)
def test_sanitize_stem(hint: str | None, expected: str) -> None:
    assert sanitize_stem(hint, "img") == expected


def test_sanitize_stem_limits_length() -> None:
    assert len(sanitize_stem("a" * 1000, "img")) == MAX_STEM_CHARS


@pytest.mark.parametrize(
    "hint", ["../../etc/passwd", "/abs/x", "..", "~", "a/b/c", "\\\\server\\share"]
)
def test_unique_output_path_stays_inside(tmp_path: Path, hint: str) -> None:
    first = unique_output_path(tmp_path, hint, "img")
    second = unique_output_path(tmp_path, hint, "img")
    assert first != second
    for path in (first, second):
        assert path.parent == tmp_path.resolve()
        assert path.suffix == ".png"


def _image_bytes(fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_save_png_normalises_to_png(tmp_path: Path, fmt: str) -> None:
    saved = save_png(tmp_path / "out", _image_bytes(fmt), "pic", "img")
    assert saved.path.read_bytes() == saved.png
    assert (saved.width, saved.height) == (20, 10)
    with Image.open(saved.path) as img:
        assert img.format == "PNG"


def test_save_png_rejects_non_images(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError):
        save_png(tmp_path, b"<html>not an image</html>", "x", "img")
    assert list(tmp_path.iterdir()) == []
