"""Resource URI patterns (authz/policy/uris.py): what parses, what is refused and why, and
how a URI reads, checked against the MCP SDK's own template matcher (`UriTemplate`, the
class `MCPServer` routes `resources/read` with): wherever the gateway says a pattern
matches, the SDK reads the same values; wherever they could differ, the gateway says
`ambiguous` (and the engine denies)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.shared.uri_template import UriTemplate

from authz.policy.uris import (
    AMBIGUOUS,
    MAX_SERVER_URI,
    NO_MATCH,
    UriPatternError,
    is_template,
    parse_pattern,
)


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ("", "must not be empty"),
        ("file:///{x", "'{' at position 8 is never closed"),
        ("file:///x}", "'}' at position 9 closes no '{'"),
        ("file:///{a}}", "'}' at position 11 closes no '{'"),
        ("docs://{}", "empty expression"),
        ("docs://{#x}", "the RFC 6570 operator '#' is not supported"),
        ("docs://{?x}", "the RFC 6570 operator '?' is not supported"),
        ("docs://{/x}", "the RFC 6570 operator '/' is not supported"),
        ("docs://{.x}", "the RFC 6570 operator '.' is not supported"),
        ("docs://{;x}", "the RFC 6570 operator ';' is not supported"),
        ("docs://{&x}", "the RFC 6570 operator '&' is not supported"),
        ("docs://{a,b}", "one variable per expression"),
        ("docs://{+a,b}", "one variable per expression"),
        ("docs://{x*}", "explode ('*') and prefix (':N') modifiers are not supported"),
        ("docs://{x:3}", "explode ('*') and prefix (':N') modifiers are not supported"),
        ("docs://{a-b}", "a variable name is letters, digits and '_'"),
        ("docs://{a{b}", "a variable name is letters, digits and '_'"),
        ("docs://{é}", "a variable name is letters, digits and '_'"),
        ("docs://{uri}", "a variable named 'uri' would shadow args.uri"),
        ("docs://{+uri}", "a variable named 'uri' would shadow args.uri"),
        ("docs://{a}{b}", "variables 'a' and 'b' have no literal text between them"),
        ("docs://{a}{+b}", "variables 'a' and 'b' have no literal text between them"),
        ("docs://{a}/{a}", "variable 'a' is used twice"),
        ("x://{+a}/{+b}", "a template may have one {+name} variable"),
    ],
)
def test_refused_with_a_reason(pattern: str, fragment: str) -> None:
    with pytest.raises(UriPatternError) as raised:
        parse_pattern(pattern)
    assert fragment in str(raised.value)


def test_an_exact_uri_matches_only_itself_byte_for_byte() -> None:
    pattern = parse_pattern("file:///etc/hosts")
    assert pattern.exact and pattern.match("file:///etc/hosts").variables == {}
    # percent-encoded: the server decodes the values it passes on, so this is denied
    assert pattern.match("file:///etc/%68osts") == AMBIGUOUS
    for other in (
        "FILE:///etc/hosts",  # scheme case
        "file:///etc/hosts/",  # trailing slash
        "file:///etc/./hosts",  # dot segment
        "file:///etc/hosts?x=1",  # query
        "file:///etc/hosts#f",  # fragment
        "file:///etc/h\u043ests",  # Cyrillic o
        "file:///etc/hosts\n",
        " file:///etc/hosts",
    ):
        assert pattern.match(other) == NO_MATCH, other


def test_template_variables_read_as_the_server_decodes_them() -> None:
    docs = parse_pattern("docs://{name}")
    assert docs.variables == ("name",) and not docs.exact
    assert docs.match("docs://readme").variables == {"name": "readme"}
    assert docs.match("docs://hello%20world").variables == {"name": "hello world"}
    assert docs.match("docs://%C3%A9t%C3%A9").variables == {"name": "été"}
    assert docs.match("docs://100%25").variables == {"name": "100%"}
    assert docs.match("docs://a/b") == NO_MATCH  # a literal / ends {name}
    files = parse_pattern("file:///{+path}")
    assert files.match("file:///a/b/c.md").variables == {"path": "a/b/c.md"}
    assert files.match("file:///a%20b/c").variables == {"path": "a b/c"}


@pytest.mark.parametrize(
    ("pattern", "uri"),
    [
        # a value a function reading paths resolves to another file (the SDK's safe_join)
        ("docs://{name}", "docs://..%2Fetc%2Fpasswd"),
        ("docs://{name}", "docs://%2e%2e"),
        ("docs://{name}", "docs://.%2Fsecret"),
        ("docs://{name}", "docs://%2Fsecret"),
        ("docs://{name}", "docs://a%2F%2Fb"),
        ("docs://{name}", "docs://a%2F"),
        ("docs://{name}", "docs://a%5C..%5Cb"),
        ("docs://{name}", "docs://secret%00"),
        ("file:///{+path}", "file:///a/b/../c"),
        ("file:///{+path}", "file:///./a"),
        ("file:///{+path}", "file:///a//b"),
        ("file:///{+path}", "file:///a/"),
        ("file:///{+path}", "file:////etc/passwd"),
        ("file:///{+path}", "file:///a/%2e%2e/b"),
        # another spelling of a URI the pattern reads otherwise
        ("file:///data/secret.txt", "file:///data/%73ecret.txt"),
        ("file:///data/secret.txt", "file:///data/secre%74.txt"),
        ("docs://guide", "docs://gu%69de"),
        ("docs://{name}", "docs://%2573ecret"),  # encoded twice: 'secret' once more decoded
        ("x://{a}-{b}", "x://1%2D2"),  # the server reads no '-'; decoded once, it does
    ],
)
def test_a_uri_that_reads_as_another_is_ambiguous(pattern: str, uri: str) -> None:
    assert parse_pattern(pattern).match(uri) == AMBIGUOUS


def test_an_encoded_spelling_that_reads_alike_matches() -> None:
    exact = parse_pattern("docs://hello%20world")
    assert exact.match("docs://hello%20world").variables == {}  # once decoded: no match
    assert parse_pattern("docs://hello world").match("docs://hello%20world") == AMBIGUOUS
    pair = parse_pattern("x://{a}-{b}")
    assert pair.match("x://1%2D2-3").variables == {"a": "1-2", "b": "3"}
    assert pair.match("x://1%20-2").variables == {"a": "1 ", "b": "2"}


@pytest.mark.parametrize(
    ("pattern", "uri"),
    [
        ("docs://{name}", "docs://"),  # the server would serve name=""
        ("docs://{name}", "docs://a,b"),  # the server ends {name} at ','
        ("docs://{name}", "docs://a&b"),  # ... and at '&'
        ("x://{+path}", "x://a?b"),  # the server refuses '?' in {+path}
        ("x://{+path}", "x://a#b"),
        ("x://{a}/{b}", "x:///b"),
        ("x://{a}-{+p}", "x://-z"),
        ("x://{+p}.md", "x://.md"),
    ],
)
def test_where_the_readings_part_the_match_is_ambiguous(pattern: str, uri: str) -> None:
    assert parse_pattern(pattern).match(uri) == AMBIGUOUS


def test_a_uri_longer_than_the_server_reads_is_ambiguous() -> None:
    pattern = parse_pattern("docs://{+path}")
    long = "docs://" + "a" * MAX_SERVER_URI
    assert UriTemplate.parse("docs://{+path}").match(long) is None
    assert pattern.match(long) == AMBIGUOUS
    assert pattern.match("other://" + "a" * MAX_SERVER_URI) == NO_MATCH


def test_is_template_is_the_servers_test() -> None:
    assert is_template("docs://{name}") and is_template("a{b}c")
    assert not is_template("docs://readme") and not is_template("a}b{") and not is_template("{")


# -- the gateway's reading against the SDK's -------------------------------------------------

TEMPLATES = [
    "docs://{name}",
    "file:///a/{x}",
    "file:///{+path}",
    "x://{a}-{+p}",
    "x://{+p}/{n}",
    "x://{a}.{b}",
    "x://{a}/y/{+p}.md",
    "{+p}",
    "db://{table}/rows/{id}",
    "x://{a}-{b}-{c}",
    "mail://{user}@{host}",
    "x://pre{a}post",
]
URIS = [
    "docs://readme",
    "docs://",
    "docs://a,b",
    "docs://a&b",
    "docs://a/b",
    "docs://..%2Fetc%2Fpasswd",
    "docs://%2e%2e",
    "docs://a%2",
    "docs://%ZZ",
    "docs://%C3%A9",
    "docs://%FF",
    "docs://a?x=1",
    "docs://a#frag",
    "DOCS://readme",
    "docs://re\u0430dme",
    "docs://a\x00b",
    "docs://a\nb",
    "file:///a/%2e%2e",
    "file:///a/b",
    "file:///a/",
    "a/relative/path",
    "file:///a/b/c",
    "file:///../etc/passwd",
    "x://1-2-3",
    "x://a/b/c",
    "x://1.2.3",
    "x://a?b",
    "x://a#b",
    "x://a/y/b/c.md",
    "x://a/y/.md",
    "x://-",
    "x://--",
    "x://a-b-c-d",
    "db://users/rows/7",
    "db://users/rows/",
    "db://a/b/rows/7",
    "db://users/rows/7/rows/8",
    "mail://a@b@c",
    "x://prepost",
    "x://preXpostpost",
    "é://ü",
    "",
]


def _agrees(pattern: str, uri: str) -> None:
    found = parse_pattern(pattern).match(uri)
    if found.ambiguous:
        return  # denied: the readings could differ
    served = UriTemplate.parse(pattern).match(uri)
    if found.variables is None:
        assert served is None, (pattern, uri, served)
    else:
        assert served == dict(found.variables), (pattern, uri, served, found)


@pytest.mark.parametrize("pattern", TEMPLATES)
def test_the_gateway_reads_a_uri_as_the_sdk_serves_it(pattern: str) -> None:
    """For every tricky URI: no match where the SDK serves nothing, the SDK's own values
    where it matches, or ambiguous (denied)."""
    for uri in URIS:
        _agrees(pattern, uri)
    matched = [u for u in URIS if parse_pattern(pattern).match(u).matched]
    assert matched, "the table exercises each pattern's match"


_CHARS = st.sampled_from([*"ab-./?#&,%2Fe@", "%2F", "%2e", "%", "\x00", "\u0430", "{", "}"])


@settings(max_examples=600, deadline=None)
@given(
    pattern=st.sampled_from(TEMPLATES),
    middle=st.lists(_CHARS, max_size=12).map("".join),
)
def test_random_uris_read_alike_or_ambiguous(pattern: str, middle: str) -> None:
    # keep the pattern's first and last literal so the scans get past the quick refusal
    atoms = parse_pattern(pattern).atoms
    head = atoms[0] if isinstance(atoms[0], str) else ""
    tail = atoms[-1] if isinstance(atoms[-1], str) and len(atoms) > 1 else ""
    _agrees(pattern, head + middle + tail)


@settings(max_examples=300, deadline=None)
@given(uri=st.text(max_size=40))
def test_any_text_reads_alike_or_ambiguous(uri: str) -> None:
    for pattern in TEMPLATES:
        _agrees(pattern, uri)
