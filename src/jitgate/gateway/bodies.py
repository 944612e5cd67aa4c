"""Bodies through the gateway, in bounded memory.

The caller's body is counted and timed while it streams up (:class:`RequestBody`): past
``limit`` bytes, or when one read waits longer than ``stall`` seconds, the upload stops and the
reason is kept for the proxy to answer (413 / 408).

Rack (Rails, Sinatra) and Laravel take a ``_method`` form field as the request's method, so
every body they read as a form is checked before the upstream can act on it
(:func:`check_form`; a ``_method`` is refused as 400 ``method-override``), by its kind
(:func:`form_kind`):

* ``application/x-www-form-urlencoded``: read whole, at most :data:`MAX_FORM_SIZE` (413
  past it), and forwarded whole.
* no ``Content-Type`` (or a blank one), declared or chunked, which Rack reads as a form:
  its first :data:`MAX_FORM_SIZE` bytes are read and checked as a form
  (:func:`overrides_method`); a body that ends within them is forwarded whole, a larger
  one as those bytes followed by the rest of the stream, unchanged (uploads without a
  type are legitimate).
* ``multipart/*``: a part whose head names it ``_method`` (``name=``, quoted or not, any
  case of the header and parameter names, or RFC 7578's ``name*=``) is refused
  (:class:`PartScanner`, which holds back only a bounded tail, so that a part head split
  across reads is still caught). The first :data:`MAX_FORM_SIZE` bytes are read and
  scanned before the upstream is asked; the rest streams up scanned, and a ``_method``
  part in it stops the upload (the upstream never has the body's end, so never a whole
  request to dispatch). A multipart body without exactly one boundary, or with a part
  head longer than :data:`MAX_PART_HEAD`, cannot be checked and is refused alike.

The decision endpoint for Envoy, which is sent the body it checks, judges bodies alike.

The upstream's body is scrubbed while it streams back (:class:`Scrubber`): every
spelling of the secret is overwritten by as many ``*``, so lengths (``Content-Length``,
``Content-Range``) stay true. A chunk's tail that could begin a spelling is held back
until the next chunk (or the end), so that a secret split across two chunks is still
caught; any other tail goes out at once, so streamed events are not delayed.

A compressed body cannot be scrubbed as it is. The gateway asks upstreams for
``identity``; one that compresses anyway with ``gzip`` or ``deflate`` has its body decoded
while it streams (:class:`Decoder`, at most :data:`DECODED_STEP` bytes of output per
step, so a decompression bomb costs time, not memory), then scrubbed, and the caller gets
it unencoded (:data:`DECODED_DROPPED` headers removed). Any other coding (``br``, ``zstd``,
several codings, a compressed partial answer) cannot be decoded here and is refused
(:func:`decoder_for` answers None).
"""

from __future__ import annotations

import asyncio
import functools
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote_to_bytes

from aiohttp import StreamReader, web

from jitgate.gateway.enforce import METHOD_OVERRIDE_PARAMS, query_keys

MAX_FORM_SIZE = 1 << 20
MAX_PART_HEAD = 16 * 1024  # a multipart part's head (its header lines), at most
FORM_TYPE = "application/x-www-form-urlencoded"
OVERRIDE_DETAIL = "method-override headers and parameters are refused"
NO_BODY_STATUSES = frozenset({204, 304})
DECODED_STEP = 64 * 1024
# What no longer describes a body once its coding is undone.
DECODED_DROPPED = frozenset(
    {"content-encoding", "content-length", "content-md5", "digest", "content-digest", "repr-digest"}
)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyLimitError(Exception):
    """The caller's body broke a limit or a rule; ``status`` and ``reason`` say which."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def too_large(limit: int) -> BodyLimitError:
    return BodyLimitError(413, "body-too-large", f"the request body is larger than {limit} bytes")


def too_slow(stall: float) -> BodyLimitError:
    return BodyLimitError(408, "client-timeout", f"the request body stalled for {stall:g} s")


def overridden(detail: str = OVERRIDE_DETAIL) -> BodyLimitError:
    return BodyLimitError(400, "method-override", detail)


async def _read(content: StreamReader, stall: float) -> bytes:
    try:
        async with asyncio.timeout(stall):
            return await content.readany()
    except TimeoutError:
        raise too_slow(stall) from None


class RequestBody:
    """The caller's body as an async iterable for the upstream request; see the module.

    ``head``: its first bytes, already read; ``scanner``: the multipart scan to go on
    with (a ``_method`` part stops the upload before the chunk that completes it)."""

    def __init__(
        self,
        content: StreamReader,
        *,
        limit: int,
        stall: float,
        head: bytes = b"",
        scanner: PartScanner | None = None,
    ) -> None:
        self._content = content
        self._limit = limit
        self._stall = stall
        self._head = head
        self._scanner = scanner
        self.refused: BodyLimitError | None = None  # set before the upload is stopped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = len(self._head)
        try:
            if self._head:
                yield self._head
            while chunk := await _read(self._content, self._stall):
                sent += len(chunk)
                if sent > self._limit:
                    raise too_large(self._limit)
                if self._scanner is not None:
                    self._scanner.feed(chunk)
                yield chunk
        except BodyLimitError as exc:
            self.refused = exc
            raise


async def read_form(content: StreamReader, *, limit: int, stall: float) -> bytes:
    """The whole body, which must fit in ``min(limit, MAX_FORM_SIZE)``."""
    limit = min(limit, MAX_FORM_SIZE)
    data = bytearray()
    while chunk := await _read(content, stall):
        data += chunk
        if len(data) > limit:
            raise too_large(limit)
    return bytes(data)


async def read_head(content: StreamReader, *, limit: int, stall: float) -> tuple[bytes, bool]:
    """The body's first :data:`MAX_FORM_SIZE` bytes (or a little more: whole reads), and
    whether they are all of it; past ``limit`` it is refused."""
    data = bytearray()
    while len(data) <= MAX_FORM_SIZE:
        chunk = await _read(content, stall)
        if not chunk:
            return bytes(data), True
        data += chunk
        if len(data) > limit:
            raise too_large(limit)
    return bytes(data), False


class Form(StrEnum):
    """How a body that a framework reads as a form is checked (see the module)."""

    URLENCODED = "urlencoded"
    UNTYPED = "untyped"
    MULTIPART = "multipart"


def form_kind(request: web.BaseRequest) -> Form | None:
    """How ``request``'s body is checked for a ``_method`` field; None: it is not a form."""
    if not request.body_exists:
        return None
    if not request.headers.get("Content-Type", "").strip():
        return Form.UNTYPED  # Rack reads a body without a type as a form
    kind = request.content_type.lower()
    if kind == FORM_TYPE:
        return Form.URLENCODED
    if kind.startswith("multipart/"):  # Rack parses multipart/mixed and /related too
        return Form.MULTIPART
    return None


def is_form(request: web.BaseRequest) -> bool:
    """Whether ``request``'s body is checked for a ``_method`` field (see the module)."""
    return form_kind(request) is not None


def overrides_method(form: bytes, *, complete: bool = True) -> bool:
    """Whether a form body names a method-override field, read as a query string is.

    ``complete=False``: ``form`` is only the body's start, whose last field may be cut
    short; a last name without its ``=`` is not yet known, and not judged."""
    text = form.decode("latin-1")
    if not complete:
        before, _, last = text.rpartition("&")
        text = text if "=" in last else before
    return not query_keys(text).isdisjoint(METHOD_OVERRIDE_PARAMS)


_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]*)"|([^";,\s]+))', re.IGNORECASE)
# A ``name`` or ``name*`` parameter anywhere in a part's head (not ``filename``).
_NAME = re.compile(rb'(?:^|[;\s])name(\*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', re.IGNORECASE)
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
_OVERRIDE_NAMES = frozenset(name.encode() for name in METHOD_OVERRIDE_PARAMS)


def boundary(content_type: str) -> bytes | None:
    """The multipart boundary of a ``Content-Type``; None if there is none, or several
    that differ (parsers could then split the body differently from the scan)."""
    found: set[str] = {quoted or bare for quoted, bare in _BOUNDARY.findall(content_type)}
    if len(found) != 1 or "" in found:
        return None
    return found.pop().encode("latin-1")


def _names_override(head: bytes) -> bool:
    """Whether a part's head names it a method-override field."""
    for match in _NAME.finditer(head):
        extended, quoted, bare = match.groups()
        value = _ESCAPED.sub(rb"\1", quoted) if quoted is not None else bare
        if extended:  # RFC 5987 / 7578: charset'language'percent-encoded
            value = unquote_to_bytes(value.rpartition(b"'")[2])
        if value in _OVERRIDE_NAMES:
            return True
    return False


class PartScanner:
    """Finds a multipart part named ``_method`` in a byte stream, in bounded memory.

    Every ``--boundary`` starts a part head, which ends at the first blank line; each head
    is judged whole (held back until it is, up to :data:`MAX_PART_HEAD`); between heads
    only a tail shorter than the delimiter is held. :meth:`feed` raises the 400
    ``method-override`` refusal."""

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"--" + boundary
        self._held = b""

    def feed(self, chunk: bytes) -> None:
        data = self._held + chunk
        pos = 0
        while (at := data.find(self._delimiter, pos)) != -1:
            start = at + len(self._delimiter)
            if data[start : start + 2] == b"--":  # the close delimiter: the epilogue follows
                pos = start + 2
                continue
            ends = [e for e in (data.find(b"\r\n\r\n", start), data.find(b"\n\n", start)) if e >= 0]
            if not ends or len(data) - start < 2:
                if len(data) - start > MAX_PART_HEAD:
                    raise overridden("a multipart part head is too long to be checked")
                self._held = data[at:]  # the head is judged once it is whole
                return
            if min(ends) - start > MAX_PART_HEAD:
                raise overridden("a multipart part head is too long to be checked")
            if _names_override(data[start : min(ends)]):
                raise overridden()
            pos = min(ends)
        self._held = data[max(pos, len(data) - len(self._delimiter) + 1) :]


@dataclass(frozen=True, slots=True)
class Checked:
    """A form body that passed its check: its first bytes (``complete``: all of it), and
    the multipart scan to go on with while the rest streams up."""

    head: bytes
    complete: bool
    scanner: PartScanner | None = None


async def check_form(request: web.BaseRequest, *, limit: int, stall: float) -> Checked | None:
    """Read and check a body that frameworks read as a form (see the module); None: it is
    not one, and streams unread. Raises :class:`BodyLimitError` (400 ``method-override``,
    413, 408)."""
    kind = form_kind(request)
    if kind is None:
        return None
    if kind is Form.URLENCODED:
        form = await read_form(request.content, limit=limit, stall=stall)
        if overrides_method(form):
            raise overridden()
        return Checked(form, complete=True)
    scanner: PartScanner | None = None
    if kind is Form.MULTIPART:
        found = boundary(request.headers.get("Content-Type", ""))
        if found is None:
            raise overridden("a multipart body without one boundary cannot be checked")
        scanner = PartScanner(found)
    head, complete = await read_head(request.content, limit=limit, stall=stall)
    if scanner is not None:
        scanner.feed(head)
    elif overrides_method(head, complete=complete):
        raise overridden()
    return Checked(head, complete, None if complete else scanner)


@functools.lru_cache(maxsize=1024)
def _prepared(spellings: tuple[str, ...]) -> tuple[tuple[bytes, ...], frozenset[bytes], int]:
    """A scrubber's forms, their first bytes and the tail to hold back (once per secret)."""
    forms = tuple(s.encode() for s in spellings if s)
    return forms, frozenset(f[:1] for f in forms), max((len(f) for f in forms), default=1) - 1


class Scrubber:
    """Overwrites every spelling of a secret in a byte stream; see the module docstring."""

    def __init__(self, spellings: tuple[str, ...]) -> None:
        self._forms, self._firsts, self._keep = _prepared(spellings)
        self._held = b""

    def _scrub(self, data: bytes) -> bytes:
        for form in self._forms:
            data = data.replace(form, b"*" * len(form))
        return data

    def _cut(self, data: bytes) -> int:
        """Where the tail that could begin a spelling starts (``len(data)``: none)."""
        start = max(0, len(data) - self._keep)
        cut = len(data)
        for first in self._firsts:
            at = data.find(first, start, cut)
            while at != -1:
                tail = data[at:]
                if any(form.startswith(tail) for form in self._forms):
                    cut = at
                    break
                at = data.find(first, at + 1, cut)
        return cut

    def feed(self, chunk: bytes) -> bytes:
        """What may be sent now; a possible start of a secret is held back."""
        data = self._scrub(self._held + chunk)
        cut = self._cut(data)
        self._held = data[cut:]
        return data[:cut]

    def flush(self) -> bytes:
        """The held-back tail, at the end of the body (already scrubbed)."""
        data, self._held = self._held, b""
        return data


def has_body(method: str, status: int) -> bool:
    """Whether an answer to ``method`` with ``status`` can carry a body."""
    return method != "HEAD" and status >= 200 and status not in NO_BODY_STATUSES


class Decoder:
    """Undoes a ``gzip`` or ``deflate`` coding while the body streams; see the module."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._z = zlib.decompressobj(wbits)
        self._fed = False

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``chunk``, in pieces of at most :data:`DECODED_STEP`.

        Raises ``zlib.error`` on a corrupt stream."""
        self._fed = self._fed or bool(chunk)
        data = chunk
        while data:
            if self._z.eof:  # a gzip body may hold several members, one after another
                self._z = zlib.decompressobj(self._wbits)
            out = self._z.decompress(data, DECODED_STEP)
            data = self._z.unused_data if self._z.eof else self._z.unconsumed_tail
            if out:
                yield out

    def flush(self) -> bytes:
        """The rest, at the end of the body; raises ``zlib.error`` if it was cut short."""
        if self._fed and not self._z.eof:  # (an empty body is no stream at all)
            raise zlib.error("the compressed body ended early")
        return self._z.flush()


def decoder_for(encoding: str, status: int) -> Decoder | None:
    """A decoder for a ``Content-Encoding`` value, or None if it cannot be undone here."""
    wbits = _WBITS.get(encoding.strip().lower())
    if wbits is None or status == 206:  # a byte range of a compressed body cannot be decoded
        return None
    return Decoder(wbits)
