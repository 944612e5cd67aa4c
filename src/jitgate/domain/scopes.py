"""Scopes, request paths, matching and "ceiling covers request": the least-privilege core.

This module is the contract for SPEC "Scope" and security invariant 4.

**Scope text** is ``METHODS PATH-PATTERN``, one or more spaces between, nothing around, at
most 512 characters.

* ``METHODS`` is ``*`` (every method of :data:`ALL_METHODS`) or a comma-separated list of
  upper-case methods from :data:`ALL_METHODS`; lower case, unknown methods, empty items and
  duplicates are refused. ``TRACE`` and ``CONNECT`` are never grantable. A granted ``GET``
  also admits ``HEAD``.
* ``PATH-PATTERN`` starts with ``/`` and is split on ``/`` into at most 64 segments. A
  segment is ``*`` (exactly one non-empty segment; never crosses ``/``), ``{name}`` (name
  is an identifier; the same as ``*``, named for display), ``**`` (zero or more segments,
  including a trailing empty one; only as the last segment) or a literal. A literal is
  printable ASCII without ``% \\ ? # * { }``; it is never ``.`` or ``..`` (nor ``.;…``,
  ``..;…``). Partial wildcards (``a*b``) are refused. Empty segments are refused, except
  that a pattern may end with one ``/``: a literal empty last segment.
* ``str(scope)`` is canonical (methods in the order GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS,
  ``*`` when all) and ``parse_scope(str(s)) == s``.

**Paths.** :func:`normalise_path` reads a raw origin-form path (query already removed) or
refuses it with :class:`AmbiguousPath` when it could be read two ways: not starting with
``/``, ``?``/``#``, over 8192 characters, raw characters outside printable ASCII or a raw
``\\``, empty segments other than one trailing (``//``), invalid percent-encoding, decoded
bytes that are not UTF-8 (so overlong forms such as ``%c0%af``), a decoded ``/``, ``\\``,
NUL or other control character (C0, DEL, C1), a decoded segment still holding a valid
escape (``%252e``: an upstream that decodes twice would see ``.``), and ``.``/``..``
segments, plain or decoded, also followed by ``;params`` (servlet containers read ``..;``
as ``..``) and also after Unicode NFKC folding (fullwidth ``%ef%bc%8e%ef%bc%8e``). Each segment is
percent-decoded exactly once; the gateway forwards ``raw`` unchanged.

**Matching** compares pattern literals with decoded segments, exactly and case-sensitively.
``/v1/x`` and ``/v1/x/`` are different paths. ``*`` and ``{name}`` never match the empty
trailing segment; ``/v1/**`` matches ``/v1``, ``/v1/`` and ``/v1/a/b``; ``/**`` matches
every path including ``/``. ``;`` is an ordinary literal character: ``/v1/projects/42;x``
does not match ``/v1/projects/42``.

**Covering.** ``covers(ceiling, requested)`` holds exactly when every (method, path) that
``requested`` admits is admitted by ``ceiling``. ``covers_all`` wants each requested scope
inside a *single* ceiling scope; it never combines two ceilings (conservative), and an
empty request is vacuously covered (callers refuse empty scope lists).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from jitgate.errors import InvalidInput

_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
ALL_METHODS: frozenset[str] = frozenset(_METHOD_ORDER)
WRITE_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_NEVER_GRANTABLE = frozenset({"TRACE", "CONNECT"})

MAX_SCOPE_LENGTH = 512
MAX_SEGMENTS = 64
MAX_PATH_LENGTH = 8192

_SCOPE_TEXT = re.compile(r"([^ ]+) +([^ ]+)")
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_LITERAL = re.compile(r"[\x21-\x7e]+")
_LITERAL_FORBIDDEN = re.compile(r"[/%\\?#*{}]")
_RAW_PATH = re.compile(r"/[\x21-\x7e]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_VALID_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_DECODED_FORBIDDEN = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
_DOTS = frozenset({".", ".."})


class AmbiguousPath(InvalidInput):
    """A request path that could be read two ways; the gateway answers 400."""

    code = "ambiguous-path"


def _is_dot(segment: str) -> bool:
    """``.`` or ``..``, also with ``;params`` that some upstreams strip before resolving."""
    return segment in _DOTS or (
        segment[:1] == "." and ";" in segment and segment.partition(";")[0] in _DOTS
    )


def _methods_problem(methods: object) -> str | None:
    if not isinstance(methods, frozenset) or not methods:
        return "methods must be a non-empty frozenset"
    if not methods <= ALL_METHODS:
        return f"methods {sorted(map(str, methods - ALL_METHODS))} are not grantable"
    return None


def _segments_problem(segments: object) -> str | None:
    if not isinstance(segments, tuple) or not segments:
        return "segments must be a non-empty tuple (the pattern '/' is ('',))"
    if len(segments) > MAX_SEGMENTS:
        return f"more than {MAX_SEGMENTS} path segments"
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if not isinstance(seg, str):
            return "segments must be strings"
        if seg == "**":
            if i != last:
                return "'**' may only end a pattern"
        elif seg == "*" or _PARAM.fullmatch(seg):
            continue
        elif not seg:
            if i != last:
                return "empty path segment ('//')"
        elif _is_dot(seg):
            return f"segment {seg!r}: '.' and '..' segments are not allowed"
        elif "*" in seg or "{" in seg or "}" in seg:
            return f"segment {seg!r}: a wildcard must be a whole segment: '*', '{{name}}' or '**'"
        elif not _LITERAL.fullmatch(seg) or _LITERAL_FORBIDDEN.search(seg):
            return f"segment {seg!r}: literals are printable ASCII without / % \\ ? # or spaces"
    return None


@dataclass(frozen=True, slots=True)
class Scope:
    """One grantable ``METHODS PATH-PATTERN``; validated on construction."""

    methods: frozenset[str]
    segments: tuple[str, ...]
    # Precomputed for the gateway's per-call match: the admitted methods (GET brings
    # HEAD), the pattern before any "**" with None for "one segment", and whether a "**"
    # ends it.
    _admitted: frozenset[str] = field(init=False, repr=False, compare=False)
    _fixed: tuple[str | None, ...] = field(init=False, repr=False, compare=False)
    _open: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _methods_problem(self.methods) or _segments_problem(self.segments)
        if problem:
            raise InvalidInput(f"invalid scope: {problem}")
        admitted = self.methods | {"HEAD"} if "GET" in self.methods else self.methods
        is_open = self.segments[-1] == "**"
        body = self.segments[:-1] if is_open else self.segments
        fixed = tuple(None if s == "*" or s.startswith("{") else s for s in body)
        object.__setattr__(self, "_admitted", admitted)
        object.__setattr__(self, "_fixed", fixed)
        object.__setattr__(self, "_open", is_open)

    def __str__(self) -> str:
        if self.methods == ALL_METHODS:
            methods = "*"
        else:
            methods = ",".join(m for m in _METHOD_ORDER if m in self.methods)
        return f"{methods} /{'/'.join(self.segments)}"

    def admits_method(self, method: str) -> bool:
        """Exact, upper-case ``method`` is granted (a granted GET also admits HEAD)."""
        return method in self._admitted

    def matches_path(self, path: NormalisedPath) -> bool:
        segments = path.segments
        fixed = self._fixed
        if len(segments) != len(fixed) and (not self._open or len(segments) < len(fixed)):
            return False
        # strict=False: under "**" the path may be longer than the fixed part.
        for want, got in zip(fixed, segments, strict=False):
            if want is None:
                if not got:
                    return False
            elif want != got:
                return False
        return True

    def matches(self, method: str, path: NormalisedPath) -> bool:
        return method in self._admitted and self.matches_path(path)

    @property
    def is_write(self) -> bool:
        return not self.methods.isdisjoint(WRITE_METHODS)

    @property
    def is_broad(self) -> bool:
        return self._open or self.methods == ALL_METHODS


def _invalid(text: str, reason: str) -> InvalidInput:
    return InvalidInput(f"invalid scope {text!r}: {reason}")


def _parse_methods(text: str, scope_text: str) -> frozenset[str]:
    if text == "*":
        return ALL_METHODS
    methods: set[str] = set()
    for item in text.split(","):
        if not item:
            raise _invalid(scope_text, "empty item in the method list")
        if item in _NEVER_GRANTABLE:
            raise _invalid(scope_text, f"{item} is never grantable")
        if item == "*":
            raise _invalid(scope_text, "'*' stands alone for every method")
        if item not in ALL_METHODS:
            hint = " (methods are upper-case)" if item.upper() in ALL_METHODS else ""
            allowed = ", ".join(_METHOD_ORDER)
            raise _invalid(scope_text, f"unknown method {item!r}{hint}; use {allowed} or *")
        if item in methods:
            raise _invalid(scope_text, f"duplicate method {item}")
        methods.add(item)
    return frozenset(methods)


def parse_scope(text: str) -> Scope:
    """Parse scope text (grammar in the module docstring); raise :class:`InvalidInput`."""
    if not isinstance(text, str):
        raise InvalidInput(f"a scope must be text, not {type(text).__name__}")
    if len(text) > MAX_SCOPE_LENGTH:
        raise InvalidInput(f"invalid scope {text[:40]!r}...: over {MAX_SCOPE_LENGTH} characters")
    match = _SCOPE_TEXT.fullmatch(text)
    if match is None:
        raise _invalid(text, "expected 'METHODS /path-pattern', e.g. 'GET /v1/charges/*'")
    methods_text, pattern = match.groups()
    methods = _parse_methods(methods_text, text)
    if not pattern.startswith("/"):
        raise _invalid(text, "the path pattern must start with '/'")
    segments = tuple(pattern[1:].split("/"))
    problem = _segments_problem(segments)
    if problem:
        raise _invalid(text, problem)
    return Scope(methods, segments)


def parse_scopes(texts: Iterable[str]) -> tuple[Scope, ...]:
    """Parse every scope; one :class:`InvalidInput` lists every bad one."""
    if isinstance(texts, str):
        raise InvalidInput(f"expected a list of scopes, got the single string {texts!r}")
    scopes: list[Scope] = []
    problems: list[str] = []
    for text in texts:
        try:
            scopes.append(parse_scope(text))
        except InvalidInput as exc:
            problems.append(exc.detail)
    if problems:
        raise InvalidInput("; ".join(problems))
    return tuple(scopes)


@dataclass(frozen=True, slots=True)
class NormalisedPath:
    """A request path that reads one way only; build it with :func:`normalise_path`."""

    raw: str
    segments: tuple[str, ...]


def _ambiguous(raw: str, reason: str) -> AmbiguousPath:
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    return AmbiguousPath(f"ambiguous path {shown!r}: {reason}")


def _decode(raw: str, part: str) -> str:
    if _BAD_ESCAPE.search(part):
        raise _ambiguous(raw, f"invalid percent-encoding in {part!r}")
    try:
        text = unquote_to_bytes(part).decode("utf-8")
    except UnicodeDecodeError:
        raise _ambiguous(raw, f"{part!r} does not decode to valid UTF-8") from None
    # Non-ASCII is also judged in its NFKC form, which some upstreams apply ("\uff0e" -> ".").
    candidates = (text,) if text.isascii() else (text, unicodedata.normalize("NFKC", text))
    for candidate in candidates:
        bad = _DECODED_FORBIDDEN.search(candidate)
        if bad:
            what = {"/": "an encoded '/'", "\\": "an encoded '\\'"}.get(bad.group())
            raise _ambiguous(raw, f"{part!r} decodes to {what or 'a control character'}")
        if _VALID_ESCAPE.search(candidate):
            raise _ambiguous(raw, f"{part!r} is percent-encoded twice")
        if _is_dot(candidate):
            raise _ambiguous(raw, f"{part!r} decodes to a '.' or '..' segment")
    return text


def normalise_path(raw_path: str) -> NormalisedPath:
    """Read ``raw_path`` one way, or raise :class:`AmbiguousPath` saying why."""
    if len(raw_path) > MAX_PATH_LENGTH:
        raise AmbiguousPath(f"ambiguous path: longer than {MAX_PATH_LENGTH} characters")
    if not raw_path.startswith("/"):
        raise _ambiguous(raw_path, "must start with '/' (absolute-form and '*' are refused)")
    if "?" in raw_path or "#" in raw_path:
        raise _ambiguous(raw_path, "contains '?' or '#' (the query must be removed first)")
    if "\\" in raw_path:
        raise _ambiguous(raw_path, "contains a backslash")
    if not _RAW_PATH.fullmatch(raw_path):
        raise _ambiguous(raw_path, "contains a raw character outside printable ASCII")
    parts = raw_path[1:].split("/")
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if not part:
            if i != last:
                raise _ambiguous(raw_path, "empty path segment ('//')")
        elif _is_dot(part):
            raise _ambiguous(raw_path, f"{part!r} is a '.' or '..' segment")
        elif "%" in part:
            parts[i] = _decode(raw_path, part)
    return NormalisedPath(raw_path, tuple(parts))


def covers(ceiling: Scope, requested: Scope) -> bool:
    """Every (method, path) that ``requested`` admits is admitted by ``ceiling``."""
    if not requested._admitted <= ceiling._admitted:
        return False
    wanted, offered = requested._fixed, ceiling._fixed
    for i, allowed in enumerate(offered):
        if i >= len(wanted):
            # requested is shorter, or has "**" here: it admits paths ceiling refuses.
            return False
        got = wanted[i]
        if allowed is None:
            if got == "":
                return False
        elif got != allowed:
            return False
    if ceiling._open:
        return True
    return not requested._open and len(wanted) == len(offered)


def covers_all(ceilings: Iterable[Scope], requested: Iterable[Scope]) -> bool:
    """Each requested scope lies inside at least one ceiling scope."""
    offered = tuple(ceilings)
    return all(any(covers(c, r) for c in offered) for r in requested)
