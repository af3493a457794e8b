"""A denial as the client sees it (authz/envoy/denial.py): the HTTP shape comes from the
DenyKind alone."""

from __future__ import annotations

from authz.envoy.denial import denial
from authz.model import Decision, DenyKind
from authz.pipeline.gate import Verdict


def test_the_http_shape_comes_from_the_kind_not_the_rule_or_the_message() -> None:
    def shape(kind: DenyKind, message: str, rule: str | None) -> tuple[int, list[str]]:
        rendered = denial(Verdict(Decision.deny(kind, message, rule=rule), "d" * 24))
        return rendered.status, [v for k, v in rendered.headers if k == "www-authenticate"]

    assert shape(DenyKind.NOT_FOUND, "not found", None) == (404, [])
    assert shape(DenyKind.BAD_REQUEST, "not found", "(path)") == (400, [])
    plain = 'Bearer realm="mcp-authz"'
    assert shape(DenyKind.UNAUTHENTICATED, "unknown bearer token", "(auth)") == (401, [plain])
    invalid = f'{plain}, error="invalid_token"'
    assert shape(DenyKind.INVALID_TOKEN, "no grant", "(auth)") == (401, [invalid])
