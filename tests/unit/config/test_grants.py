from __future__ import annotations

import json
from typing import Any

import pytest

from authz.config.grants import (
    GrantsError,
    GrantTable,
    JwtMatcher,
    bearer_token,
    hash_token,
    load_grants,
)
from authz.model import Grant


def _doc(*grants: dict[str, Any]) -> bytes:
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
        (b"{", "$: invalid JSON at line 1, column 2"),
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


# -- mesh identities: SPIFFE IDs and verified JWT claims -----------------------------------------

ISSUER = "https://idp.example.org"
PAINTER = "spiffe://example.org/ns/agents/sa/painter"


def _spiffe(gid: str, spiffe_id: str, policy: str = "p") -> dict[str, Any]:
    return {"id": gid, "spiffe_id": spiffe_id, "policy": policy}


def _jwt(gid: str, policy: str = "p", **matcher: Any) -> dict[str, Any]:
    return {"id": gid, "jwt": {"issuer": ISSUER, **matcher}, "policy": policy}


def test_v1_token_file_loads_unchanged() -> None:
    raw = (
        b'{"version": "1", "grants": [{"id": "demo", "label": "Demo", "token_sha256": "'
        + hash_token("t").encode()
        + b'", "policy": "imagegen"}]}'
    )
    table = load_grants(raw)
    assert len(table) == 1
    assert table.lookup("t") == Grant(id="demo", label="Demo", policy="imagegen")
    assert table.by_spiffe_id == {} and table.jwt_grants == ()


def test_spiffe_lookup_is_exact() -> None:
    table = load_grants(_doc(_grant("t", "tok"), _spiffe("painter", PAINTER, "q")))
    assert len(table) == 2
    grant = table.lookup_spiffe(PAINTER)
    assert grant is not None and grant.id == "painter" and grant.policy == "q"
    for other in (
        PAINTER + "/x",
        PAINTER[:-1],
        PAINTER.upper(),
        PAINTER + "/",
        "spiffe://example.org/ns/agents/sa",
        f"URI={PAINTER}",
        "",
    ):
        assert table.lookup_spiffe(other) is None, other
    assert table.lookup(PAINTER) is None  # a SPIFFE ID is no bearer token
    assert table.lookup_jwt({"iss": ISSUER, "sub": PAINTER}) is None


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://example.org",
        "spiffe://example.org/a",
        "spiffe://my-domain_1.example/ns/a.b/sa/x-y_z",
        "spiffe://example.org/." + "a" * 100,
    ],
)
def test_valid_spiffe_ids(spiffe_id: str) -> None:
    assert load_grants(_doc(_spiffe("s", spiffe_id))).lookup_spiffe(spiffe_id) is not None


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "",
        "https://example.org/a",
        "SPIFFE://example.org/a",
        "spiffe://Example.org/a",  # trust domains are lower case
        "spiffe:///a",  # no trust domain
        "spiffe://example.org/a/",  # trailing slash
        "spiffe://example.org//a",  # empty segment
        "spiffe://example.org/a/../b",
        "spiffe://example.org/./a",
        "spiffe://example.org:8443/a",  # port
        "spiffe://user@example.org/a",  # user info
        "spiffe://example.org/a?b=c",
        "spiffe://example.org/a#b",
        "spiffe://example.org/a b",
        "spiffe://example.org/caf\u00e9",
        "spiffe://example.org/a%2Fb",
        " spiffe://example.org/a",
        "spiffe://example.org/a\n",
        "spiffe://" + "d" * 256 + "/a",
        "spiffe://example.org/" + "a" * 2048,
    ],
)
def test_invalid_spiffe_ids_name_the_field(spiffe_id: str) -> None:
    with pytest.raises(GrantsError) as info:
        load_grants(_doc(_grant("t", "tok"), _spiffe("s", spiffe_id)))
    assert "$.grants[1].spiffe_id" in str(info.value)


@pytest.mark.parametrize(
    ("grant", "fragment"),
    [
        ({"id": "a", "policy": "p"}, "$.grants[0]: Value error, a grant needs exactly one"),
        (
            {"id": "a", "token_sha256": hash_token("x"), "spiffe_id": PAINTER, "policy": "p"},
            "(got token_sha256, spiffe_id)",
        ),
        (
            {"id": "a", "spiffe_id": PAINTER, "jwt": {"issuer": ISSUER}, "policy": "p"},
            "(got spiffe_id, jwt)",
        ),
        ({"id": "a", "spiffe_id": 5, "policy": "p"}, "$.grants[0].spiffe_id"),
        ({"id": "a", "spiffe": PAINTER, "policy": "p"}, "$.grants[0].spiffe"),
        ({"id": "a", "jwt": {}, "policy": "p"}, "$.grants[0].jwt.issuer"),
        ({"id": "a", "jwt": {"issuer": ""}, "policy": "p"}, "$.grants[0].jwt.issuer"),
        ({"id": "a", "jwt": {"issuer": 1}, "policy": "p"}, "$.grants[0].jwt.issuer"),
        ({"id": "a", "jwt": ISSUER, "policy": "p"}, "$.grants[0].jwt"),
        (_jwt("a", subject=""), "$.grants[0].jwt.subject"),
        (_jwt("a", subject=7), "$.grants[0].jwt.subject"),
        (_jwt("a", audience=["x"]), "$.grants[0].jwt.audience"),
        (_jwt("a", issuers=[ISSUER]), "$.grants[0].jwt.issuers"),
        (_jwt("a", claims=["team"]), "$.grants[0].jwt.claims"),
        (_jwt("a", claims={"iss": ISSUER}), "use jwt.issuer"),
        (_jwt("a", claims={"sub": "alice"}), "use jwt.subject"),
        (_jwt("a", claims={"aud": "x"}), "use jwt.audience"),
        (_jwt("a", claims={"exp": 1}), "claim 'exp' cannot be required"),
        (_jwt("a", claims={"team": 1.5}), "$.grants[0].jwt.claims"),
        (_jwt("a", claims={"team": ["art"]}), "a string, a boolean or an integer"),
        (_jwt("a", claims={"team": {"a": 1}}), "a string, a boolean or an integer"),
        (_jwt("a", claims={"team": None}), "a string, a boolean or an integer"),
        (_jwt("a", claims={"n": 2**60}), "within ±2**53"),
        (_jwt("a", claims={"": "x"}), "a claim name has 1 to 200 characters"),
        (_jwt("a", claims={f"c{i}": i for i in range(33)}), "$.grants[0].jwt.claims"),
    ],
)
def test_invalid_matchers_name_the_field(grant: dict[str, Any], fragment: str) -> None:
    with pytest.raises(GrantsError) as info:
        load_grants(_doc(grant))
    assert fragment in str(info.value)


def test_lone_surrogates_in_jwt_matchers_are_rejected() -> None:
    raw = (
        b'{"version":"1","grants":[{"id":"a","policy":"p","jwt":{"issuer":"x",'
        b'"claims":{"team":"\\ud800"}}}]}'
    )
    with pytest.raises(GrantsError, match=r"\$\.grants\[0\]\.jwt\.claims.*lone surrogate"):
        load_grants(raw)
    raw = b'{"version":"1","grants":[{"id":"a","policy":"p","jwt":{"issuer":"\\udc00"}}]}'
    with pytest.raises(GrantsError, match=r"\$\.grants\[0\]\.jwt\.issuer: "):
        load_grants(raw)


def test_same_spiffe_id_twice_is_an_error() -> None:
    with pytest.raises(GrantsError) as info:
        load_grants(_doc(_spiffe("a", PAINTER), _spiffe("b", PAINTER, "q")))
    assert "$.grants[1].spiffe_id: same SPIFFE ID as grant 'a'" in str(info.value)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"subject": "alice"}, {"subject": "alice"}),
        ({}, {}),
        ({}, {"subject": "alice"}),  # a token of alice matches both
        ({"subject": "alice"}, {"subject": "alice", "claims": {"team": "art"}}),
        ({"claims": {"team": "art"}}, {"claims": {"level": 2}}),
        ({"subject": "a", "audience": "x"}, {"subject": "a", "audience": "y"}),  # aud: [x, y]
        ({"subject": "a", "claims": {"t": "art"}}, {"subject": "a", "claims": {"t": "art"}}),
    ],
)
def test_jwt_grants_one_token_could_match_are_an_error(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    with pytest.raises(GrantsError) as info:
        load_grants(_doc(_grant("t", "tok"), _jwt("one", **first), _jwt("two", **second)))
    message = str(info.value)
    assert "$.grants[2].jwt" in message and "'one' ($.grants[1])" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"subject": "alice"}, {"subject": "bob"}),
        ({"claims": {"team": "art"}}, {"claims": {"team": "ops"}}),
        ({"subject": "a", "claims": {"n": 1}}, {"subject": "a", "claims": {"n": 2}}),
        ({"claims": {"flag": True}}, {"claims": {"flag": 1}}),  # true is not 1
        ({"claims": {"n": "1"}}, {"claims": {"n": 1}}),  # "1" is not 1
    ],
)
def test_disjoint_jwt_grants_load(first: dict[str, Any], second: dict[str, Any]) -> None:
    table = load_grants(_doc(_jwt("one", **first), _jwt("two", **second)))
    assert len(table) == 2


def test_same_jwt_matcher_under_other_issuers_loads() -> None:
    other = {"id": "b", "jwt": {"issuer": "https://other.example", "subject": "x"}, "policy": "p"}
    table = load_grants(_doc(_jwt("a", subject="x"), other))
    found = table.lookup_jwt({"iss": "https://other.example", "sub": "x"})
    assert found is not None and found.id == "b"


def _claims_table() -> GrantTable:
    return load_grants(
        _doc(
            _jwt("alice", subject="alice"),
            _jwt("aud", subject="aud", audience="mcp-authz"),
            _jwt("typed", subject="typed", claims={"level": 2, "admin": True, "team": "art"}),
        )
    )


@pytest.mark.parametrize(
    ("payload", "grant_id"),
    [
        ({"iss": ISSUER, "sub": "alice"}, "alice"),
        ({"iss": ISSUER, "sub": "alice", "aud": "x", "extra": [1]}, "alice"),
        ({"iss": ISSUER + "/", "sub": "alice"}, None),
        ({"iss": [ISSUER], "sub": "alice"}, None),
        ({"sub": "alice"}, None),
        ({"iss": ISSUER, "sub": "Alice"}, None),
        ({"iss": ISSUER}, None),
        ({"iss": ISSUER, "sub": ["alice"]}, None),
        ({"iss": ISSUER, "sub": "aud", "aud": "mcp-authz"}, "aud"),
        ({"iss": ISSUER, "sub": "aud", "aud": ["x", "mcp-authz"]}, "aud"),
        ({"iss": ISSUER, "sub": "aud", "aud": ["x"]}, None),
        ({"iss": ISSUER, "sub": "aud", "aud": "mcp-authz-x"}, None),
        ({"iss": ISSUER, "sub": "aud", "aud": {"mcp-authz": 1}}, None),
        ({"iss": ISSUER, "sub": "aud"}, None),
        # Envoy's Struct carries every number as a float
        ({"iss": ISSUER, "sub": "typed", "level": 2.0, "admin": True, "team": "art"}, "typed"),
        ({"iss": ISSUER, "sub": "typed", "level": 2, "admin": True, "team": "art"}, "typed"),
        ({"iss": ISSUER, "sub": "typed", "level": 2.5, "admin": True, "team": "art"}, None),
        ({"iss": ISSUER, "sub": "typed", "level": "2", "admin": True, "team": "art"}, None),
        ({"iss": ISSUER, "sub": "typed", "level": True, "admin": True, "team": "art"}, None),
        ({"iss": ISSUER, "sub": "typed", "level": 2.0, "admin": 1.0, "team": "art"}, None),
        ({"iss": ISSUER, "sub": "typed", "level": 2.0, "admin": "true", "team": "art"}, None),
        ({"iss": ISSUER, "sub": "typed", "level": 2.0, "admin": True, "team": ["art"]}, None),
        ({"iss": ISSUER, "sub": "typed", "level": 2.0, "admin": True}, None),
        ({"iss": ISSUER, "sub": "typed", "level": 2.0, "admin": True, "team": None}, None),
    ],
)
def test_jwt_lookup(payload: dict[str, Any], grant_id: str | None) -> None:
    grant = _claims_table().lookup_jwt(payload)
    assert (grant.id if grant else None) == grant_id


def test_jwt_lookup_fails_closed_if_two_grants_match() -> None:
    """load_grants rejects such files; a table built by hand still never picks one."""
    a, b = Grant("a", "", "p"), Grant("b", "", "p")
    table = GrantTable({}, jwt_grants=((JwtMatcher(ISSUER), a), (JwtMatcher(ISSUER, "x"), b)))
    assert table.lookup_jwt({"iss": ISSUER, "sub": "x"}) is None
    assert table.lookup_jwt({"iss": ISSUER, "sub": "y"}) == a


@pytest.mark.parametrize(
    "gid",
    [
        "team\rci",
        "team\nci",
        "a\x00",
        "tab\there",
        "with space",
        "caf\u00e9",
        "\u200bzw",
        "",
        "x" * 201,
    ],
)
def test_grant_ids_are_visible_ascii(gid: str) -> None:
    with pytest.raises(GrantsError) as info:
        load_grants(_doc(_grant("ok", "tok-ok"), _grant(gid, "tok-bad")))
    message = str(info.value)
    assert message.startswith("grants.json: $.grants[1].id: ")
    assert "visible ASCII" in message
    assert gid not in message or not gid  # the value itself is not repeated


@pytest.mark.parametrize("gid", ["team/ci", "a:b", "{c}", "x" * 200, "!~", "team%2Fci"])
def test_any_visible_ascii_grant_id_loads(gid: str) -> None:
    grant = load_grants(_doc(_grant(gid, "tok"))).lookup("tok")
    assert grant is not None and grant.id == gid


def test_a_grant_id_must_be_a_string() -> None:
    with pytest.raises(GrantsError, match=r"\$\.grants\[0\]\.id: "):
        load_grants(_doc({"id": 7, "token_sha256": hash_token("t"), "policy": "p"}))
