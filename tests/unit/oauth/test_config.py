"""oauth.json: the protected resource's configuration, refused with the field named."""

from __future__ import annotations

import pytest

from authz.oauth.config import OAuthConfigError, load_oauth
from authz.oauth.metadata import (
    insufficient_scope_challenge,
    invalid_token_challenge,
    missing_token_challenge,
    protected_resource_metadata,
)
from tests.unit.oauth.keys import ISSUER, RESOURCE, oauth_config, oauth_json


def test_the_documented_example_loads() -> None:
    config = oauth_config()
    assert config.resource == RESOURCE
    assert config.authorization_servers == (ISSUER,)
    assert config.origin == "http://127.0.0.1:10000"
    assert config.metadata_paths == (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    )
    assert config.metadata_url == "http://127.0.0.1:10000/.well-known/oauth-protected-resource/mcp"


def test_a_resource_at_the_root_has_one_metadata_path() -> None:
    config = oauth_config(resource="https://mcp.example.com/")
    assert config.metadata_paths == ("/.well-known/oauth-protected-resource",)
    assert config.metadata_url == "https://mcp.example.com/.well-known/oauth-protected-resource"


@pytest.mark.parametrize(
    ("changes", "where", "text"),
    [
        ({"version": 2}, "$.version", "1"),
        ({"version": "1"}, "$.version", "integer"),
        ({"version": True}, "$.version", "integer"),
        ({"resource": "ftp://h/mcp"}, "$.resource", "http"),
        ({"resource": "http://h/mcp?x=1"}, "$.resource", "query"),
        ({"resource": "http://h/mcp#f"}, "$.resource", "fragment"),
        ({"resource": 'http://h/m"cp'}, "$.resource", ""),
        ({"authorization_servers": []}, "$.authorization_servers", ""),
        ({"authorization_servers": [ISSUER, ISSUER]}, "$.authorization_servers", "twice"),
        ({"algorithms": ["HS256"]}, "$.algorithms", "HS256"),
        ({"algorithms": ["none"]}, "$.algorithms", "none"),
        ({"scopes_supported": ["a b"]}, "$.scopes_supported", "scope token"),
        ({"default_scopes": ["other"]}, "$", "scopes_supported"),
        ({"clock_skew_seconds": 301}, "$.clock_skew_seconds", ""),
        ({"clock_skew_seconds": 1.5}, "$.clock_skew_seconds", ""),
        ({"surprise": 1}, "$.surprise", ""),
    ],
)
def test_bad_files_are_refused_naming_the_field(
    changes: dict[str, object], where: str, text: str
) -> None:
    with pytest.raises(OAuthConfigError) as caught:
        load_oauth(oauth_json(**changes))
    message = str(caught.value)
    assert message.startswith(f"oauth.json: {where}")
    assert text in message


def test_a_file_that_is_not_strict_json_is_refused() -> None:
    with pytest.raises(OAuthConfigError, match="duplicate"):
        load_oauth(b'{"version": 1, "version": 1}')


def test_the_metadata_document() -> None:
    assert protected_resource_metadata(oauth_config()) == {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["mcp:tools", "images:generate"],
        "bearer_methods_supported": ["header"],
    }


def test_challenges_per_rfc_6750_and_9728() -> None:
    config = oauth_config(default_scopes=["mcp:tools", "images:generate"])
    url = "http://127.0.0.1:10000/.well-known/oauth-protected-resource/mcp"
    assert missing_token_challenge(config) == (
        f'Bearer resource_metadata="{url}", scope="mcp:tools images:generate"'
    )
    assert invalid_token_challenge(config) == (
        f'Bearer error="invalid_token", resource_metadata="{url}", '
        'scope="mcp:tools images:generate"'
    )
    assert insufficient_scope_challenge(config, ["images:generate"]) == (
        f'Bearer error="insufficient_scope", scope="images:generate", resource_metadata="{url}"'
    )
    bare = oauth_config(default_scopes=[])
    assert missing_token_challenge(bare) == f'Bearer resource_metadata="{url}"'
    assert insufficient_scope_challenge(None, ["a", "b"]) == (
        'Bearer error="insufficient_scope", scope="a b"'
    )
