from __future__ import annotations

import json

import pytest

from authz.grants import GrantsError, bearer_token, hash_token, load_grants


def _doc(*grants: dict[str, str]) -> bytes:
    return json.dumps({"version": "1", "grants": list(grants)}).encode()


def _grant(gid: str, token: str, policy: str = "p") -> dict[str, str]:
    return {"id": gid, "label": gid.title(), "token_sha256": hash_token(token), "policy": policy}


def test_lookup_by_hash_only() -> None:
    table = load_grants(_doc(_grant("a", "tok-a"), _grant("b", "tok-b", "q")))
    grant = table.lookup("tok-b")
    assert grant is not None and grant.id == "b" and grant.policy == "q"
    assert table.lookup("tok-c") is None
    assert table.lookup(hash_token("tok-a")) is None  # the hash itself is not a credential


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "not valid JSON"),
        (b'{"version":"2","grants":[]}', "$.version"),
        (b'{"version":"1","grants":[],"x":1}', "$.x"),
        (b'{"version":"1","version":"1","grants":[]}', "duplicate key"),
        (
            _doc({"id": "a", "label": "", "token_sha256": "ABC", "policy": "p"}),
            "$.grants[0].token_sha256",
        ),
        (
            _doc({"id": "a", "token_sha256": hash_token("x"), "policy": "p", "token": "x"}),
            "$.grants[0].token",
        ),
        (_doc({"id": "a", "token_sha256": hash_token("x")}), "$.grants[0].policy"),
        (_doc(_grant("a", "x"), _grant("a", "y")), "$.grants[1].id"),
        (_doc(_grant("a", "x"), _grant("b", "x")), "$.grants[1].token_sha256"),
    ],
)
def test_invalid_documents_name_the_field(raw: bytes, fragment: str) -> None:
    with pytest.raises(GrantsError) as info:
        load_grants(raw)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER abc", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer  abc", None),
        ("Bearer abc ", None),
        ("Bearer abc def", None),
        ("Bearer abc,Bearer def", None),
        ("Basic abc", None),
        ("Bearer\tabc", None),
        ("Bearer ab\u00e9", None),
        ("Bearer abc\n", None),  # `$` alone would match before the newline
        ("Bearer abc\r\n", None),
        ("\nBearer abc", None),
        ("Bearer abc,", None),
        (" Bearer abc", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
