"""Scope grammar, path normalisation, matching and covering (SPEC invariant 4)."""

from __future__ import annotations

from itertools import product
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.domain.scopes import (
    ALL_METHODS,
    AmbiguousPath,
    Scope,
    covers,
    covers_all,
    normalise_path,
    parse_scope,
    parse_scopes,
)
from jitgate.errors import InvalidInput
from tests import strategies as strat

# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "methods", "segments", "canonical"),
    [
        ("GET /v1/charges/*", {"GET"}, ("v1", "charges", "*"), None),
        (
            "GET,POST /v1/customers/{id}/notes",
            {"GET", "POST"},
            ("v1", "customers", "{id}", "notes"),
            None,
        ),
        ("* /v1/reports/**", ALL_METHODS, ("v1", "reports", "**"), None),
        ("* /**", ALL_METHODS, ("**",), None),
        ("GET /", {"GET"}, ("",), None),
        ("GET /v1/x/", {"GET"}, ("v1", "x", ""), None),
        ("OPTIONS /v1/*/{name_2}/**", {"OPTIONS"}, ("v1", "*", "{name_2}", "**"), None),
        ("DELETE /v1/projects/42;x", {"DELETE"}, ("v1", "projects", "42;x"), None),
        ("GET /v1/a-b_c.d~e!$&'()+,=:@", {"GET"}, ("v1", "a-b_c.d~e!$&'()+,=:@"), None),
        ("GET /v1/.well-known/...", {"GET"}, ("v1", ".well-known", "..."), None),
        ("POST,GET /v1/x", {"GET", "POST"}, ("v1", "x"), "GET,POST /v1/x"),
        ("GET   /v1/x", {"GET"}, ("v1", "x"), "GET /v1/x"),
        ("OPTIONS,DELETE,PATCH,PUT,POST,HEAD,GET /a", ALL_METHODS, ("a",), "* /a"),
    ],
)
def test_parse_accepts(
    text: str, methods: set[str], segments: tuple[str, ...], canonical: str | None
) -> None:
    scope = parse_scope(text)
    assert scope.methods == frozenset(methods)
    assert scope.segments == segments
    assert str(scope) == (canonical or text)
    assert parse_scope(str(scope)) == scope


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected 'METHODS"),
        ("GET", "expected 'METHODS"),
        ("/v1/x", "expected 'METHODS"),
        (" GET /v1", "expected 'METHODS"),
        ("GET /v1 ", "expected 'METHODS"),
        ("GET\t/v1", "expected 'METHODS"),
        ("GET /v1 /v2", "expected 'METHODS"),
        ("GET, POST /v1", "expected 'METHODS"),
        ("get /v1/x", "upper-case"),
        ("FETCH /v1", "unknown method"),
        ("TRACE /v1", "never grantable"),
        ("GET,CONNECT /v1", "never grantable"),
        ("GET,,POST /v1", "empty item"),
        ("GET, /v1", "empty item"),
        ("GET,GET /v1", "duplicate"),
        ("*,GET /v1", "stands alone"),
        ("GET v1/x", "must start with '/'"),
        ("GET *", "must start with '/'"),
        ("GET /v1//x", "empty path segment"),
        ("GET //", "empty path segment"),
        ("GET /v1/../x", "'..'"),
        ("GET /v1/./x", "'..'"),
        ("GET /v1/..;x", "'..'"),
        ("GET /v1/a*b", "whole segment"),
        ("GET /v1/*x", "whole segment"),
        ("GET /v1/***", "whole segment"),
        ("GET /v1/{id", "whole segment"),
        ("GET /v1/{1d}", "whole segment"),
        ("GET /v1/{}", "whole segment"),
        ("GET /v1/{a-b}", "whole segment"),
        ("GET /v1/**/x", "only end"),
        ("GET /v1/**/", "only end"),
        ("GET /v1/a%2fb", "printable ASCII"),
        ("GET /v1/a\\b", "printable ASCII"),
        ("GET /v1/a?b", "printable ASCII"),
        ("GET /v1/a#b", "printable ASCII"),
        ("GET /v1/\u00e9", "printable ASCII"),
        ("GET /v1/a\x7f", "printable ASCII"),
        ("GET /" + "a/" * 64 + "a", "more than 64"),
        ("GET /" + "a" * 600, "over 512"),
    ],
)
def test_parse_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_scope(text)
    assert reason in info.value.detail
    assert info.value.detail.startswith("invalid scope ")
    if len(text) <= 512:
        assert repr(text) in info.value.detail


@pytest.mark.parametrize(
    ("methods", "segments"),
    [
        (frozenset(), ("a",)),
        (frozenset({"TRACE"}), ("a",)),
        (frozenset({"*"}), ("a",)),
        ({"GET"}, ("a",)),
        (frozenset({"GET"}), ()),
        (frozenset({"GET"}), ["a"]),
        (frozenset({"GET"}), ("**", "a")),
        (frozenset({"GET"}), ("a/b",)),
        (frozenset({"GET"}), ("", "a")),
    ],
)
def test_scope_constructor_validates(methods: object, segments: object) -> None:
    with pytest.raises(InvalidInput, match="invalid scope"):
        Scope(methods, segments)  # type: ignore[arg-type]


def test_parse_scopes_reports_every_bad_scope() -> None:
    assert parse_scopes(["GET /a", "POST /b"]) == (parse_scope("GET /a"), parse_scope("POST /b"))
    with pytest.raises(InvalidInput) as info:
        parse_scopes(["GET /a", "get /b", "GET /c/../d"])
    assert "'get /b'" in info.value.detail
    assert "'GET /c/../d'" in info.value.detail
    with pytest.raises(InvalidInput, match="single string"):
        parse_scopes("GET /a")


@pytest.mark.parametrize(
    ("text", "is_write", "is_broad"),
    [
        ("GET /v1/x", False, False),
        ("GET,HEAD,OPTIONS /v1/*", False, False),
        ("GET /v1/**", False, True),
        ("POST /v1/x", True, False),
        ("DELETE /v1/{id}", True, False),
        ("* /v1/x", True, True),
    ],
)
def test_write_and_broad(text: str, is_write: bool, is_broad: bool) -> None:
    scope = parse_scope(text)
    assert (scope.is_write, scope.is_broad) == (is_write, is_broad)


# --- matching --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "method", "path", "expected"),
    [
        ("GET /v1/x", "GET", "/v1/x", True),
        ("GET /v1/x", "GET", "/v1/x/", False),
        ("GET /v1/x/", "GET", "/v1/x/", True),
        ("GET /v1/x/", "GET", "/v1/x", False),
        ("GET /v1/*", "GET", "/v1/a", True),
        ("GET /v1/*", "GET", "/v1/a/b", False),
        ("GET /v1/*", "GET", "/v1/a%2Fb".replace("%2F", "/"), False),
        ("GET /v1/*", "GET", "/v1/", False),
        ("GET /v1/*", "GET", "/v1", False),
        ("GET /v1/{id}/notes", "GET", "/v1/7/notes", True),
        ("GET /v1/{id}/notes", "GET", "/v1/7/8/notes", False),
        ("GET /v1/**", "GET", "/v1", True),
        ("GET /v1/**", "GET", "/v1/", True),
        ("GET /v1/**", "GET", "/v1/a/b", True),
        ("GET /v1/**", "GET", "/v1/a/b/", True),
        ("GET /v1/**", "GET", "/v2", False),
        ("GET /v1/**", "GET", "/v10", False),
        ("GET /v1/**", "GET", "/", False),
        ("GET /**", "GET", "/", True),
        ("GET /**", "GET", "/a/b/", True),
        ("GET /", "GET", "/", True),
        ("GET /", "GET", "/a", False),
        ("GET /v1/x", "HEAD", "/v1/x", True),
        ("GET /v1/x", "POST", "/v1/x", False),
        ("GET /v1/x", "get", "/v1/x", False),
        ("HEAD /v1/x", "GET", "/v1/x", False),
        ("* /v1/x", "OPTIONS", "/v1/x", True),
        ("* /v1/x", "TRACE", "/v1/x", False),
        ("* /v1/x", "CONNECT", "/v1/x", False),
        ("GET /v1/projects/42", "GET", "/v1/projects/42", True),
        ("GET /v1/projects/42", "GET", "/v1/projects/42;x", False),
        ("GET /v1/projects/*", "GET", "/v1/projects/42;x", True),
        ("GET /v1/a", "GET", "/v1/%61", True),
        ("GET /v1/a", "GET", "/V1/a", False),
        ("GET /v1/*/x", "GET", "/v1/a%20b/x", True),
        ("GET /v1/*/x", "GET", "/v1/caf%C3%A9/x", True),
    ],
)
def test_matches(scope: str, method: str, path: str, expected: bool) -> None:
    assert parse_scope(scope).matches(method, normalise_path(path)) is expected


def test_admits_method_and_matches_path_separately() -> None:
    scope = parse_scope("GET,POST /v1/*")
    assert scope.admits_method("HEAD")
    assert not scope.admits_method("PUT")
    assert scope.matches_path(normalise_path("/v1/a"))


# --- normalisation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "segments"),
    [
        ("/", ("",)),
        ("/v1", ("v1",)),
        ("/v1/", ("v1", "")),
        ("/v1/a%20b", ("v1", "a b")),
        ("/v1/%41", ("v1", "A")),
        ("/v1/caf%C3%A9", ("v1", "caf\u00e9")),
        ("/v1/42;x", ("v1", "42;x")),
        ("/v1/a%25", ("v1", "a%")),
        ("/v1/...", ("v1", "...")),
        ("/v1/.well-known/a..b", ("v1", ".well-known", "a..b")),
        ("/v1/%3F%23", ("v1", "?#")),
    ],
)
def test_normalise_accepts(raw: str, segments: tuple[str, ...]) -> None:
    path = normalise_path(raw)
    assert path.raw == raw
    assert path.segments == segments


HOSTILE_PATHS = [
    "/v1/../x",
    "/v1/..",
    "/..",
    "/v1/./x",
    "/v1/%2e%2e/x",
    "/v1/%2E/x",
    "/v1/%2E%2e/x",
    "/v1/.%2e/x",
    "/v1/..;/admin",
    "/v1/%2e%2e;x/admin",
    "/v1/.;",
    "/v1/..%3b/admin",
    "/v1//x",
    "//",
    "//v1",
    "/v1/a%2fb",
    "/v1/a%2Fb",
    "/v1/a%5cb",
    "/v1/a\\b",
    "/v1/%00",
    "/v1/a%00b",
    "/v1/%252e%252e",
    "/v1/%2561",
    "/v1/%c0%ae%c0%ae",
    "/v1/%c0%af",
    "/v1/%ff",
    "/v1/%ed%a0%80",
    "/v1/%ef%bc%8e%ef%bc%8e",
    "/v1/a%ef%bc%8fb",
    "/v1/%ef%bc%85%ef%bc%92%ef%bd%85",
    "http://evil/v1",
    "*",
    "",
    "v1/x",
    "/v1/a%",
    "/v1/a%2",
    "/v1/%zz",
    "/v1/%g1",
    "/v1/a\tb",
    "/v1/a\nb",
    "/v1/a\rb",
    "/v1/a\x7fb",
    "/v1/a\x00b",
    "/v1/a%09b",
    "/v1/a%0ab",
    "/v1/a%0Db",
    "/v1/a%7fb",
    "/v1/a%c2%85b",
    "/v1/\u00e9",
    "/v1/a b",
    "/v1/x?y=1",
    "/v1/x#frag",
    "/" + "a" * 9000,
]


@pytest.mark.parametrize("raw", HOSTILE_PATHS)
def test_normalise_refuses_hostile_paths(raw: str) -> None:
    with pytest.raises(AmbiguousPath) as info:
        normalise_path(raw)
    assert info.value.code == "ambiguous-path"
    assert isinstance(info.value, InvalidInput)
    assert info.value.detail.startswith("ambiguous path")


# --- covering --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ceiling", "requested", "expected"),
    [
        ("GET /v1/**", "GET /v1/x", True),
        ("GET /v1/**", "GET /v1", True),
        ("GET /v1/**", "GET /v1/", True),
        ("GET /v1/**", "GET /v1/**", True),
        ("GET /v1/**", "GET /v1/*/x/**", True),
        ("GET /v1/**", "GET /v2/x", False),
        ("GET /v1/a/**", "GET /v1/**", False),
        ("GET /v1/*", "GET /v1/x", True),
        ("GET /v1/*", "GET /v1/{id}", True),
        ("GET /v1/{id}", "GET /v1/*", True),
        ("GET /v1/*", "GET /v1/", False),
        ("GET /v1/*", "GET /v1/**", False),
        ("GET /v1/*", "GET /v1/x/y", False),
        ("GET /v1/*/b", "GET /v1/a/b", True),
        ("GET /v1/x", "GET /v1/*", False),
        ("GET /v1/x", "GET /v1/x", True),
        ("GET /v1/x", "GET /v1/x/", False),
        ("GET /v1/x/", "GET /v1/x", False),
        ("GET /v1/x", "GET /v1/y", False),
        ("GET /**", "GET /", True),
        ("GET /", "GET /**", False),
        ("* /**", "* /**", True),
        ("GET /**", "POST /x", False),
        ("GET /x", "HEAD /x", True),
        ("GET /x", "GET,HEAD /x", True),
        ("HEAD /x", "GET /x", False),
        ("GET,POST /v1/**", "POST /v1/a", True),
        ("POST,PUT,PATCH,DELETE /**", "* /x", False),
    ],
)
def test_covers(ceiling: str, requested: str, expected: bool) -> None:
    assert covers(parse_scope(ceiling), parse_scope(requested)) is expected


def test_covers_all() -> None:
    ceilings = parse_scopes(["GET /v1/**", "POST /v1/deployments"])
    ok = parse_scopes(["GET /v1/x", "POST /v1/deployments"])
    assert covers_all(ceilings, ok)
    assert covers_all(iter(ceilings), iter(ok))
    assert not covers_all(ceilings, parse_scopes(["GET /v1/x", "POST /v1/other"]))
    assert covers_all(ceilings, [])
    assert not covers_all([], ok)
    # One requested scope must fit one ceiling scope; two ceilings are never combined.
    assert not covers_all(parse_scopes(["GET /a", "POST /a"]), parse_scopes(["GET,POST /a"]))


# --- properties ------------------------------------------------------------------------


@settings(max_examples=200)
@given(strat.any_scopes)
def test_round_trip(scope: Scope) -> None:
    assert parse_scope(str(scope)) == scope


@settings(max_examples=200)
@given(st.data(), strat.scope_pairs())
def test_covers_is_sound(data: st.DataObject, pair: tuple[Scope, Scope]) -> None:
    ceiling, requested = pair
    if not covers(ceiling, requested):
        return
    paths = data.draw(
        st.lists(st.one_of(strat.concrete_paths, strat.paths_in(requested)), min_size=4, max_size=8)
    )
    for method, path in product(strat.REQUEST_METHODS, paths):
        if requested.matches(method, path):
            assert ceiling.matches(method, path), (method, path.raw)


# covers() is exact, not merely sound, checked exhaustively on a small world: every pattern
# of up to three body segments over two literals and both wildcards, with each tail. Paths
# add a fresh literal and run two segments longer, which is enough to hold a witness for
# every pair that does not cover.
_SMALL = ("a", "v1")
_PATTERNS = [
    (*body, *tail)
    for n in range(4)
    for body in product((*_SMALL, "*", "{id}"), repeat=n)
    for tail in ((), ("",), ("**",))
    if body or tail
]
_UNIVERSE = [
    normalise_path("/" + "/".join(segments) + ("/" if trailing else ""))
    for n in range(6)
    for segments in product((*_SMALL, "zz"), repeat=n)
    for trailing in ((False, True) if n else (False,))
]


def test_covers_is_exact_on_paths() -> None:
    scopes = [Scope(frozenset({"GET"}), pattern) for pattern in _PATTERNS]
    matched = [
        frozenset(i for i, path in enumerate(_UNIVERSE) if scope.matches_path(path))
        for scope in scopes
    ]
    for ceiling, ceiling_paths in zip(scopes, matched, strict=True):
        for requested, requested_paths in zip(scopes, matched, strict=True):
            expected = requested_paths <= ceiling_paths
            assert covers(ceiling, requested) is expected, (str(ceiling), str(requested))


def test_covers_is_exact_on_methods() -> None:
    methods = sorted(ALL_METHODS)
    sets = [
        frozenset(m for m, bit in zip(methods, bits, strict=True) if bit)
        for bits in product((False, True), repeat=len(methods))
        if any(bits)
    ]
    scopes = [Scope(s, ("a",)) for s in sets]
    for ceiling in scopes:
        for requested in scopes:
            expected = all(ceiling.admits_method(m) for m in methods if requested.admits_method(m))
            assert covers(ceiling, requested) is expected, (str(ceiling), str(requested))


@settings(max_examples=200)
@given(st.data(), strat.scopes())
def test_scope_matches_its_instances(data: st.DataObject, scope: Scope) -> None:
    assert scope.matches_path(data.draw(strat.paths_in(scope)))


@settings(max_examples=300)
@given(strat.raw_paths, strat.any_scopes)
def test_normalised_paths_read_one_way(raw: str, scope: Scope) -> None:
    try:
        path = normalise_path(raw)
    except AmbiguousPath:
        return
    assert path.raw == raw
    assert "/" + "/".join(path.segments) == unquote(raw, errors="strict")
    assert all(seg for seg in path.segments[:-1])
    assert not any(seg.partition(";")[0] in {".", ".."} for seg in path.segments)
    assert not any("\\" in seg or "\x00" in seg for seg in path.segments)
    assert unquote(unquote(raw)) == unquote(raw)
    scope.matches("GET", path)  # never raises
