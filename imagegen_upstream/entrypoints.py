"""The `imagegen-upstream` and `imagegen-offline-gemini` commands.

Both need the `imagegen` extra (the MCP SDK, google-genai, pillow). Without it they stop with
one line naming what to install, before importing anything of it.
"""

from __future__ import annotations

import sys

from authz.extras import ExtraMissing, require_extra

__all__ = ["imagegen_upstream", "offline_gemini"]


def _extra_installed(command: str) -> bool:
    try:
        require_extra("imagegen", command)
    except ExtraMissing as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return False
    return True


def imagegen_upstream() -> int:
    """`imagegen-upstream`: the ImageGen MCP server (imagegen_upstream.cli)."""
    if not _extra_installed("imagegen-upstream"):
        return 2
    from imagegen_upstream.cli import main

    return main()


def offline_gemini() -> int:
    """`imagegen-offline-gemini`: the offline Gemini-compatible endpoint."""
    if not _extra_installed("imagegen-offline-gemini"):
        return 2
    from imagegen_upstream.offline_gemini import main

    return main()
