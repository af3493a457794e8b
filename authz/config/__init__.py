"""The configuration: the mounted directory, hot-reloaded (`source`: grants.json, policies,
approvers.json), the credential tables it holds (`grants`, `approvers`, read by `files`),
and the sidecar's own knobs (`settings`: flags and `MCP_AUTHZ_*` variables)."""

from authz.config.grants import hash_token
from authz.config.settings import Settings, SettingsError
from authz.config.source import ConfigError, ConfigSet, ConfigSource, load_config

__all__ = [
    "ConfigError",
    "ConfigSet",
    "ConfigSource",
    "Settings",
    "SettingsError",
    "hash_token",
    "load_config",
]
