"""Bodies through the gateway, in bounded memory.

The caller's body is counted and timed while it streams up (:class:`RequestBody`): past
``limit`` bytes, or when one read waits longer than ``stall`` seconds, the upload stops and the
reason is kept for the proxy to answer (413 / 408). A form body (``application/
x-www-form-urlencoded``, or a declared body of at most :data:`MAX_FORM_SIZE` without a
``Content-Type``, which Rack also reads as a form) is read whole first, up to
:data:`MAX_FORM_SIZE`, so that a ``_method`` field is refused before the upstream sees any
of it (:func:`read_form`).

The upstream's body is scrubbed while it streams back (:class:`Scrubber`): every
spelling of the secret is overwritten by as many ``*``, so lengths (``Content-Length``,
``Content-Range``) stay true. A chunk's tail that could begin a spelling is held back
until the next chunk (or the end), so that a secret split across two chunks is still
caught; any other tail goes out at once, so streamed events are not delayed. Bodies with
a ``Content-Encoding`` cannot be scrubbed and pass as they are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import StreamReader

MAX_FORM_SIZE = 1 << 20


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


class Scrubber:
    """Overwrites every spelling of a secret in a byte stream; see the module docstring."""

    def __init__(self, spellings: tuple[str, ...]) -> None:
        self._forms = tuple(s.encode() for s in spellings if s)
        self._firsts = {f[:1] for f in self._forms}
        self._keep = max((len(f) for f in self._forms), default=1) - 1
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
