"""The files the local stack and `mcp-authz demo` read from the installed package.

`deploy/envoy.yaml`, `deploy/envoy-http.yaml` and the demo configuration directory
`deploy/config/` ship as package data of `authz` under `deploy_assets/`, read through
`importlib.resources`. In a checkout `authz/deploy_assets` is a link to `deploy/`, so the
repository's files are the only copy; a wheel holds the files that pyproject.toml's
package-data names (tests/packaging/test_wheel.py checks that they are all there and equal
to `deploy/`).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Final

__all__ = ["ASSETS", "AssetMissing", "asset_path"]

ASSETS: Final = "deploy_assets"
"""The package-data folder of `authz` that holds the shipped files of `deploy/`."""


class AssetMissing(FileNotFoundError):
    """A shipped file is not in this installation (e.g. a build without `deploy/`)."""


def asset_path(*parts: str) -> Path:
    """The file or directory `deploy/<parts>` as installed: `asset_path("config")`,
    `asset_path("envoy.yaml")`. Links are resolved, so in a checkout this is the path in
    `deploy/` itself."""
    resource = files("authz").joinpath(ASSETS, *parts)
    name = "/".join(("deploy", *parts))
    if not isinstance(resource, Path):  # e.g. installed inside a zip archive
        raise AssetMissing(f"{name}: authz is not installed as files ({resource!r})")
    if not resource.exists():
        raise AssetMissing(
            f"{name} is not installed ({resource}): this installation of authz was built "
            "without deploy/; install the built wheel or run from a checkout"
        )
    return resource.resolve()
