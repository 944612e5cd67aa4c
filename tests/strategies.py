"""Hypothesis strategies shared by the test-suite.

Scope strategies draw literals from a small alphabet on purpose, so that two random
scopes overlap often and ``covers`` is true often enough to be exercised.
"""

from __future__ import annotations

from hypothesis import strategies as st

from jitgate.domain.scopes import NormalisedPath, Scope, normalise_path

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
LITERALS = ("a", "b", "v1", "42")
WILDCARDS = ("*", "{id}")

# Every character a pattern literal may hold (printable ASCII minus % \ ? # * { } /).
LITERAL_CHARS = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in "%\\?#*{}/")

method_sets = st.frozensets(st.sampled_from(METHODS), min_size=1)
REQUEST_METHODS = (*METHODS, "TRACE", "CONNECT", "get", "head")

any_literal = st.text(LITERAL_CHARS, min_size=1, max_size=8).filter(
    lambda s: s.partition(";")[0] not in {".", ".."}
)
param = st.from_regex(r"\{[A-Za-z_][A-Za-z0-9_]{0,6}\}", fullmatch=True)


@st.composite
def pattern_segments(
    draw: st.DrawFn,
    segment: st.SearchStrategy[str] | None = None,
    max_body: int = 4,
) -> tuple[str, ...]:
    """Valid pattern segments: a body, then maybe "**" or a trailing-slash ""."""
    seg = segment if segment is not None else st.sampled_from((*LITERALS, *WILDCARDS))
    body = draw(st.lists(seg, max_size=max_body))
    tail = draw(st.sampled_from((None, "", "**")))
    if tail is not None or not body:
        body.append(tail or "")
    return tuple(body)


def scopes(literals: tuple[str, ...] = LITERALS, max_body: int = 4) -> st.SearchStrategy[Scope]:
    segment = st.sampled_from((*literals, *WILDCARDS))
    return st.builds(Scope, method_sets, pattern_segments(segment, max_body))


any_scopes = st.builds(
    Scope,
    method_sets,
    pattern_segments(st.one_of(any_literal, param, st.just("*")), max_body=6),
)


def _narrowed_segments(
    draw: st.DrawFn, ceiling: Scope, literals: tuple[str, ...]
) -> tuple[str, ...]:
    segment = st.sampled_from((*literals, *WILDCARDS))
    segments: list[str] = []
    for seg in ceiling.segments:
        if seg == "**":
            segments.extend(draw(pattern_segments(segment, 3)))
        elif seg == "*" or seg.startswith("{"):
            segments.append(draw(segment))
        else:
            segments.append(seg)
    return tuple(segments)


@st.composite
def scope_pairs(
    draw: st.DrawFn, literals: tuple[str, ...] = LITERALS, max_body: int = 4
) -> tuple[Scope, Scope]:
    """(ceiling, requested), often overlapping so that ``covers`` is exercised both ways.

    The requested methods are random or a subset of the ceiling's; its pattern is random
    or the ceiling's narrowed (wildcards pinned, "**" continued), so near misses abound.
    """
    ceiling = draw(scopes(literals, max_body))
    methods = draw(
        st.one_of(method_sets, st.frozensets(st.sampled_from(sorted(ceiling.methods)), min_size=1))
    )
    random = pattern_segments(st.sampled_from((*literals, *WILDCARDS)), max_body)
    if draw(st.booleans()):
        segments = _narrowed_segments(draw, ceiling, literals)
        segments = _near_miss(draw, segments, literals)
    else:
        segments = draw(random)
    return ceiling, Scope(methods, segments)


def _near_miss(
    draw: st.DrawFn, segments: tuple[str, ...], literals: tuple[str, ...]
) -> tuple[str, ...]:
    """Maybe change the end of a pattern: replace, drop or add its last segment."""
    ends = st.sampled_from((*literals, *WILDCARDS, "", "**"))
    move = draw(st.sampled_from(("keep", "replace", "drop", "add")))
    if move == "replace":
        return (*segments[:-1], draw(ends))
    if move == "drop" and len(segments) > 1:
        return segments[:-1]
    if move == "add" and segments[-1] not in {"", "**"}:
        return (*segments, draw(ends))
    return segments


def _path(segments: list[str], trailing: bool) -> NormalisedPath:
    return normalise_path("/" + "/".join(segments) + ("/" if trailing and segments else ""))


concrete_paths = st.builds(
    _path, st.lists(st.sampled_from((*LITERALS, "zz")), max_size=6), st.booleans()
)


@st.composite
def paths_in(draw: st.DrawFn, scope: Scope) -> NormalisedPath:
    """A concrete path that ``scope`` matches, by filling in its wildcards."""
    filler = st.sampled_from((*LITERALS, "zz", "a%20b"))
    segments: list[str] = []
    for seg in scope.segments:
        if seg == "**":
            segments.extend(draw(st.lists(filler, max_size=3)))
            if draw(st.booleans()):
                segments.append("")
        elif seg == "*" or seg.startswith("{"):
            segments.append(draw(filler))
        else:
            segments.append(seg)
    return normalise_path("/" + "/".join(segments))


_PIECES = (
    "a",
    ".",
    "..",
    "...",
    "%2e",
    "%2E",
    "%2f",
    "%5c",
    "%25",
    "%00",
    "%c0%ae",
    "%e2%80%ae",
    "%ef%bc%8e",
    ";",
    "..;",
    "%",
    "%g",
    "~",
    "é",
    " ",
    "\\",
    "?",
    "",
)

raw_paths = st.one_of(
    st.text(max_size=24),
    st.text("/.%2eEfF5cC0a;\\?#~ \t", max_size=24).map(lambda s: "/" + s),
    st.lists(
        st.one_of(
            st.sampled_from(_PIECES),
            st.binary(min_size=1, max_size=3).map(lambda b: "".join(f"%{x:02x}" for x in b)),
        ),
        max_size=5,
    ).map(lambda parts: "/" + "/".join(parts)),
)
