"""Response masking on the gateway: JSON answers of masked calls are read, masked, re-sent.

A call is masked when its API declares masks or its grant token carries some (``msk``);
the masks applied are the union of both (:func:`masks_for`). Calls without masks never
come here: their answers stream as before.

For a masked call the upstream request asks for ``Accept-Encoding: identity``, as every
call does, and loses ``Range`` and ``If-Range`` (:data:`REQUEST_DROPPED`): a compressed
body cannot be parsed, and a byte range of a JSON document may itself be valid JSON —
e.g. just the string that a mask hides.

Which answers are masked (:func:`inspect_answer`) fails closed. An answer that cannot
have a body (``HEAD``, ``204``, ``304``, ``1xx``) streams as it is. One declared
``application/json`` or ``application/*+json`` (any parameters) is masked, or refused;
so is any ``206``, whatever its type (none was asked for, and a byte range of a document
cannot be judged). Any other answer is judged by its first bytes, since sloppy upstreams
send JSON as ``text/plain``, ``text/html``, ``application/octet-stream`` or with no
``Content-Type`` at all (:class:`_Sniffer`). Past a byte order mark, JSON whitespace and
an anti-XSSI prefix (:data:`XSSI_PREFIXES`: ``)]}'``, ``)]}',``, ``while(1);``,
``for(;;);``, the last two also with a space before the parenthesis), a body *starts like
a JSON container* if its first character is ``{``, or is ``[`` followed by what may go on
a JSON array (a value or ``]``): ``[INFO] …`` and ``[section]`` are common openings of
text, a ``{`` that is not JSON is rare and often data (a Python or JavaScript literal).
The bytes are read in the declared charset, if Python knows it, and in the encoding RFC
8259 detection gives them (UTF-8/16/32); either reading is enough. What starts like JSON
is then masked exactly as a declared JSON answer, so it is refused if it is not JSON
(broken or truncated, a Python ``{'a': 1}``, JSON Lines); anything else streams untouched,
the bytes read to tell first, then the rest, none lost or reordered (:func:`resume`).
Reading to tell waits like any upstream read (the stall timeout: 504
``upstream-body-timeout``) and holds at most :data:`SNIFF_LIMIT` bytes of body: one still
undecided by then (only whitespace so far) is taken as JSON. A body compressed despite
the identity request (``gzip``, ``deflate``) is judged on its decoded bytes by a
throwaway decoder, a step at a time (a decompression bomb costs at most the limit);
starting like JSON, or undecodable, it is refused like a compressed JSON answer, else it
streams decoded as any other answer. A masked answer keeps its declared ``Content-Type``
(aiohttp's ``application/octet-stream`` if it had none, as when it streams): the gateway
masks values, it does not relabel answers, and a prefixed body is not
``application/json`` anyway.

A masked answer is:

* read whole, up to ``limit`` bytes (``gateway.max_mask_body``, 10 MiB): larger is refused
  before or while reading — fail closed, 502 ``response-too-large-to-mask``;
* decoded (the declared ``charset``, else UTF-8/16/32 as RFC 8259 allows), stripped of a
  byte order mark and of an anti-XSSI prefix, and parsed strictly: invalid JSON,
  ``NaN``/``Infinity`` or a number beyond float range, nesting too deep to parse or to
  search, a ``Content-Encoding`` other than ``identity`` despite the request, or a ``206``
  partial answer are refused — fail closed, 502 ``response-not-json``;
* masked (:func:`jitgate.domain.masks.apply_masks`: every selected value becomes
  ``"****"``, whatever its type) and re-serialised as compact ASCII JSON (other
  characters as ``\\u`` escapes), after the anti-XSSI prefix as it came (with its
  whitespace: clients strip ``)]}',\\n`` exactly), so the body is valid in any charset; a
  declared charset other than UTF-8 is replaced by ``utf-8`` in ``Content-Type``.
  Numbers keep their value, not necessarily their spelling (``1.0E2`` becomes ``100.0``).

The proxy then scrubs secrets from the masked body as from any other, sets its
``Content-Length``, and drops :data:`RESPONSE_DROPPED`: validators and digests of the
unmasked body would be wrong, and a digest would let a caller confirm a guess of a
masked value offline. Large bodies are parsed in a worker thread so the event loop
keeps serving other calls. JSON inside another format (an HTML page, a JSONP call
``cb({...})``, server-sent events) is not a JSON answer and is not masked.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import re
import zlib
from collections.abc import AsyncIterator, Iterable, Sequence

import aiohttp
from jsonpath import JSONPathError
from multidict import CIMultiDict

from jitgate.domain.masks import Mask, apply_masks
from jitgate.gateway.bodies import Decoder, decoder_for, has_body
from jitgate.gateway.enforce import Allow

MAX_MASK_BODY = 10 << 20  # gateway.max_mask_body's default
REQUEST_DROPPED = ("range", "if-range")
RESPONSE_DROPPED = frozenset(
    {"content-length", "etag", "content-md5", "digest", "content-digest", "repr-digest"}
)
_THREAD_ABOVE = 256 * 1024  # bytes: parse larger bodies off the event loop
_CHUNK = 64 * 1024
SNIFF_LIMIT = 64 * 1024  # bytes of an answer not declared JSON looked at to tell
# What some APIs put before JSON so that it does not run as a script (Angular, Google,
# Facebook). Longest first; the sniffer sees whitespace runs as one space.
XSSI_PREFIXES = (")]}',", ")]}'", "while (1);", "while(1);", "for (;;);", "for(;;);")
_XSSI_KEPT = re.compile(
    r"[ \t\n\r]*(?:\)\]\}',?|while[ \t\n\r]*\(1\);|for[ \t\n\r]*\(;;\);)[ \t\n\r]*"
)
_WS = " \t\n\r"
_WS_RUN = re.compile(r"[ \t\n\r]+")
_ARRAY_NEXT = frozenset('{["-0123456789tfn]')  # what may follow "[" in JSON
_SNIFF_TEXT = 32  # characters kept: enough for a BOM, a prefix, "[" and what follows
_BOMS = {
    "utf-16": (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE),
    "utf-32": (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE),
}


class MaskRefusedError(Exception):
    """A masked call's answer cannot be masked; it is refused (502) with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def masks_for(allow: Allow) -> tuple[Mask, ...]:
    """The API's masks and the grant's, each once (the API's first)."""
    api, grant = allow.upstream.masks, allow.token.masks
    if not grant:
        return api
    return api + tuple(mask for mask in grant if mask not in api)


def mask_request(headers: CIMultiDict[str]) -> None:
    """The upstream request of a masked call: a whole answer (the proxy asks every
    upstream for ``Accept-Encoding: identity``)."""
    for name in REQUEST_DROPPED:
        headers.popall(name, None)


def masked_headers(
    headers: Iterable[tuple[str, str]], response: aiohttp.ClientResponse
) -> CIMultiDict[str]:
    """The headers of a masked answer: ``headers`` (already scrubbed) minus
    :data:`RESPONSE_DROPPED`, with ``charset=utf-8`` if another charset was declared."""
    out = CIMultiDict((k, v) for k, v in headers if k.lower() not in RESPONSE_DROPPED)
    charset = response.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        out["Content-Type"] = f"{response.content_type}; charset=utf-8"
    return out


def is_json(media_type: str) -> bool:
    """``application/json`` or ``application/*+json`` (``media_type`` without parameters)."""
    kind = media_type.lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def _coding(response: aiohttp.ClientResponse) -> str:
    return response.headers.get("Content-Encoding", "identity").strip().lower()


def _verdict(text: str, end: bool) -> bool | None:
    """Whether ``text`` (a body's beginning, whitespace runs as one space) starts like a
    JSON container; None: more is needed to tell (never so at the ``end`` of the body)."""
    rest = text.removeprefix("\ufeff").lstrip(_WS)
    if not end and any(len(rest) < len(p) and p.startswith(rest) for p in XSSI_PREFIXES):
        return None
    for prefix in XSSI_PREFIXES:
        if rest.startswith(prefix):
            rest = rest[len(prefix) :].lstrip(_WS)
            break
    if not rest:
        return False if end else None
    if rest[0] != "[":
        return rest[0] == "{"
    after = rest[1:].lstrip(_WS)
    if not after:
        return True if end else None  # a lone "[" is broken JSON: refused, not streamed
    return after[0] in _ARRAY_NEXT


class _Sniffer:
    """Tells from a body's first bytes whether it starts like a JSON container, in linear
    time: each reading decodes incrementally and keeps only :data:`_SNIFF_TEXT`
    characters, whitespace runs collapsed (see the module)."""

    def __init__(self, charset: str | None) -> None:
        self.seen = 0
        self._charset = charset
        self._held = b""  # until four bytes tell the encoding (RFC 8259 detection)
        self._readings: list[tuple[codecs.IncrementalDecoder, list[str]]] | None = None

    def _start(self, data: bytes) -> list[tuple[codecs.IncrementalDecoder, list[str]]]:
        readings: dict[str, codecs.IncrementalDecoder] = {}
        for label in (self._charset, json.detect_encoding(data)):
            try:  # unknown, bytes-to-bytes (base64) or without "replace" (idna): unused
                b" ".decode(label or "", "replace")
            except (LookupError, ValueError):
                continue
            name = codecs.lookup(label or "").name
            if name in _BOMS and not data.startswith(_BOMS[name]):
                name += "-be"  # as RFC 2781 reads UTF-16 without a BOM (Python's would raise)
            readings.setdefault(name, codecs.getincrementaldecoder(name)("replace"))
        return [(decoder, [""]) for decoder in readings.values()]

    def feed(self, data: bytes, end: bool) -> bool | None:
        """The verdict once the body so far (``end``: the whole body) tells, else None."""
        self.seen += len(data)
        if self._readings is None:
            self._held += data
            if len(self._held) < 4 and not end:
                return None
            data, self._held = self._held, b""
            self._readings = self._start(data)
        verdicts = set()
        for decoder, text in self._readings:
            try:
                decoded = decoder.decode(data, end)
            except ValueError:  # a codec that fails all the same: cannot tell, fail closed
                return True
            text[0] = _WS_RUN.sub(" ", text[0] + decoded)[:_SNIFF_TEXT]
            verdicts.add(_verdict(text[0], end))
        if True in verdicts:
            return True
        if None not in verdicts:
            return False
        return True if self.seen > SNIFF_LIMIT else None  # undecided that long: fail closed


def _sniff_decoded(sniffer: _Sniffer, decoder: Decoder, chunk: bytes, end: bool) -> bool | None:
    """:meth:`_Sniffer.feed` on the decoded ``chunk``: a step at a time, so a
    decompression bomb costs at most :data:`SNIFF_LIMIT` and a step."""
    for piece in decoder.feed(chunk):
        if (verdict := sniffer.feed(piece, False)) is not None:
            return verdict
    return sniffer.feed(decoder.flush(), True) if end else None


async def inspect_answer(method: str, response: aiohttp.ClientResponse) -> tuple[bool, bytes]:
    """Whether a masked call's answer is masked (by :func:`read_masked`, which may refuse
    it), and the bytes of its body read to tell: not masked, it streams from them on
    (:func:`resume`). See the module; raises what reading the upstream body raises."""
    if not has_body(method, response.status):
        return False, b""
    if is_json(response.content_type) or response.status == 206:
        return True, b""
    decoder: Decoder | None = None
    if (encoding := _coding(response)) != "identity":
        decoder = decoder_for(encoding, response.status)
        if decoder is None:  # the streaming path refuses it (upstream-encoding-refused)
            return False, b""
    sniffer = _Sniffer(response.charset)
    head = bytearray()
    verdict: bool | None = None
    while verdict is None:
        chunk = await response.content.readany()
        head += chunk
        if decoder is None:
            verdict = sniffer.feed(chunk, not chunk)
            continue
        try:
            verdict = _sniff_decoded(sniffer, decoder, chunk, not chunk)
        except zlib.error:  # cannot tell: refused, as a compressed answer to mask is
            verdict = True
        if verdict is None and len(head) > SNIFF_LIMIT:  # e.g. empty gzip members, on and on
            verdict = True
    return verdict, bytes(head)


async def resume(head: bytes, response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body of an answer that :func:`inspect_answer` did not mask: ``head``, then the rest."""
    if head:
        yield head
    async for chunk in response.content.iter_chunked(_CHUNK):
        yield chunk


def _not_json(detail: str) -> MaskRefusedError:
    return MaskRefusedError("response-not-json", detail)


def _too_large(limit: int) -> MaskRefusedError:
    return MaskRefusedError(
        "response-too-large-to-mask",
        f"the upstream's answer to mask is larger than {limit} bytes and cannot be masked",
    )


async def read_masked(
    response: aiohttp.ClientResponse, masks: Sequence[Mask], limit: int, head: bytes = b""
) -> tuple[bytes, int]:
    """The masked body of ``response`` (whose first bytes, ``head``, are already read) and
    how many values were masked; see the module.

    Raises :class:`MaskRefusedError`, or what reading the upstream body raises.
    """
    if (encoding := _coding(response)) != "identity":
        detail = f"the upstream sent a {encoding[:40]}-encoded answer to mask; it cannot be masked"
        raise _not_json(detail)
    if response.status == 206:
        raise _not_json("a partial (206) answer cannot be masked")
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray(head)
    if len(body) > limit:
        raise _too_large(limit)
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    if len(body) > _THREAD_ABOVE:
        return await asyncio.to_thread(mask_json, bytes(body), response.charset, masks)
    return mask_json(bytes(body), response.charset, masks)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one beyond float range (``1e400``) would be written back
    as ``Infinity``, which is not JSON: refused."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def mask_json(body: bytes, charset: str | None, masks: Sequence[Mask]) -> tuple[bytes, int]:
    """``body`` parsed, masked and serialised again (after its anti-XSSI prefix, if it has
    one), and how many values were masked."""
    try:
        if charset:
            text = body.decode(charset)
        else:  # as json.loads decodes bytes
            text = body.decode(json.detect_encoding(body), "surrogatepass")
        text = text.removeprefix("\ufeff")
        kept = found.group() if (found := _XSSI_KEPT.match(text)) else ""
        document = json.loads(text[len(kept) :], parse_constant=_no_constants, parse_float=_finite)
        masked = apply_masks(document, masks)
        out = json.dumps(document, separators=(",", ":"))
        return (kept + out).encode("ascii"), masked
    except JSONPathError:  # before RecursionError: the library's is a subclass of both
        raise _not_json("the upstream's JSON nests too deeply to be masked") from None
    except LookupError:
        raise _not_json(f"the upstream declared an unknown charset {charset!r}") from None
    except (ValueError, RecursionError):  # includes UnicodeDecodeError, JSONDecodeError
        raise _not_json("the upstream's answer is not valid JSON; it cannot be masked") from None
