"""Bodies through the gateway, in bounded memory.

The caller's body is counted and timed while it streams up (:class:`RequestBody`): past
``limit`` bytes, or when one read waits longer than ``stall`` seconds, the upload stops and the
reason is kept for the proxy to answer (413 / 408). A form body (``application/
x-www-form-urlencoded``, or a declared body of at most :data:`MAX_FORM_SIZE` without a
``Content-Type``, which Rack also reads as a form) is read whole first, up to
:data:`MAX_FORM_SIZE`, so that a ``_method`` field is refused before the upstream sees any
of it (:func:`read_form`). :func:`is_form` and :func:`overrides_method` say which bodies
are read so and which of them carry a method override; the decision endpoint for Envoy,
which is sent the body it checks, judges them alike.

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
import zlib
from collections.abc import AsyncIterator, Iterator

from aiohttp import StreamReader, web

from jitgate.gateway.enforce import METHOD_OVERRIDE_PARAMS, query_keys

MAX_FORM_SIZE = 1 << 20
FORM_TYPE = "application/x-www-form-urlencoded"
NO_BODY_STATUSES = frozenset({204, 304})
DECODED_STEP = 64 * 1024
# What no longer describes a body once its coding is undone.
DECODED_DROPPED = frozenset(
    {"content-encoding", "content-length", "content-md5", "digest", "content-digest", "repr-digest"}
)
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyLimitError(Exception):
    """The caller's body broke a limit; ``status`` and ``reason`` say which."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def too_large(limit: int) -> BodyLimitError:
    return BodyLimitError(413, "body-too-large", f"the request body is larger than {limit} bytes")


def too_slow(stall: float) -> BodyLimitError:
    return BodyLimitError(408, "client-timeout", f"the request body stalled for {stall:g} s")


async def _read(content: StreamReader, stall: float) -> bytes:
    try:
        async with asyncio.timeout(stall):
            return await content.readany()
    except TimeoutError:
        raise too_slow(stall) from None


class RequestBody:
    """The caller's body as an async iterable for the upstream request; see the module."""

    def __init__(self, content: StreamReader, *, limit: int, stall: float) -> None:
        self._content = content
        self._limit = limit
        self._stall = stall
        self.refused: BodyLimitError | None = None  # set before the upload is stopped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            while chunk := await _read(self._content, self._stall):
                sent += len(chunk)
                if sent > self._limit:
                    raise too_large(self._limit)
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


def is_form(request: web.BaseRequest) -> bool:
    """Whether ``request``'s body is read whole as a form (see the module docstring)."""
    if not request.body_exists:
        return False
    if "Content-Type" not in request.headers:
        # Rack reads a POST without a Content-Type as a form. Only a small declared body
        # is read whole: large or chunked uploads without a type stream as they are.
        length = request.content_length
        return length is not None and length <= MAX_FORM_SIZE
    return request.content_type.lower() == FORM_TYPE


def overrides_method(form: bytes) -> bool:
    """Whether a form body names a method-override field, read as a query string is."""
    return not query_keys(form.decode("latin-1")).isdisjoint(METHOD_OVERRIDE_PARAMS)


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
