"""Response masking on the gateway: JSON answers of masked calls are read, masked, re-sent.

A call is masked when its API declares masks or its grant token carries some (``msk``);
the masks applied are the union of both (:func:`masks_for`). Calls without masks never
come here: their answers stream as before.

For a masked call the upstream request asks for ``Accept-Encoding: identity``, as every
call does, and loses ``Range`` and ``If-Range`` (:data:`REQUEST_DROPPED`): a compressed
body cannot be parsed, and a byte range of a JSON document may itself be valid JSON —
e.g. just the string that a mask hides. The answer is then masked when its media type is
``application/json`` or ``application/*+json`` (any parameters) and it can have a body
(not ``HEAD``, ``204``, ``304``); any other answer streams untouched. A masked answer is:

* read whole, up to ``limit`` bytes (``gateway.max_mask_body``, 10 MiB): larger is refused
  before or while reading — fail closed, 502 ``response-too-large-to-mask``;
* decoded (the declared ``charset``, else UTF-8/16/32 as RFC 8259 allows) and parsed
  strictly: invalid JSON, ``NaN``/``Infinity`` or a number beyond float range, nesting
  too deep to parse or to search, a ``Content-Encoding`` other than ``identity`` despite
  the request, or a ``206`` partial answer are refused — fail closed, 502
  ``response-not-json``;
* masked (:func:`jitgate.domain.masks.apply_masks`: every selected value becomes
  ``"****"``, whatever its type) and re-serialised as compact ASCII JSON (other
  characters as ``\\u`` escapes), so the body is valid in any charset; a declared
  charset other than UTF-8 is replaced by ``utf-8`` in ``Content-Type``. Numbers keep
  their value, not necessarily their spelling (``1.0E2`` becomes ``100.0``).

The proxy then scrubs secrets from the masked body as from any other, sets its
``Content-Length``, and drops :data:`RESPONSE_DROPPED`: validators and digests of the
unmasked body would be wrong, and a digest would let a caller confirm a guess of a
masked value offline. Large bodies are parsed in a worker thread so the event loop
keeps serving other calls.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterable, Sequence

import aiohttp
from jsonpath import JSONPathError
from multidict import CIMultiDict

from jitgate.domain.masks import Mask, apply_masks
from jitgate.gateway.bodies import has_body
from jitgate.gateway.enforce import Allow

MAX_MASK_BODY = 10 << 20  # gateway.max_mask_body's default
REQUEST_DROPPED = ("range", "if-range")
RESPONSE_DROPPED = frozenset(
    {"content-length", "etag", "content-md5", "digest", "content-digest", "repr-digest"}
)
_THREAD_ABOVE = 256 * 1024  # bytes: parse larger bodies off the event loop
_CHUNK = 64 * 1024


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


def applies(method: str, response: aiohttp.ClientResponse) -> bool:
    """Whether a masked call's answer is masked (else it streams untouched)."""
    return has_body(method, response.status) and is_json(response.content_type)


def _not_json(detail: str) -> MaskRefusedError:
    return MaskRefusedError("response-not-json", detail)


def _too_large(limit: int) -> MaskRefusedError:
    return MaskRefusedError(
        "response-too-large-to-mask",
        f"the upstream's JSON answer is larger than {limit} bytes and cannot be masked",
    )


async def read_masked(
    response: aiohttp.ClientResponse, masks: Sequence[Mask], limit: int
) -> tuple[bytes, int]:
    """The masked body of ``response`` and how many values were masked; see the module.

    Raises :class:`MaskRefusedError`, or what reading the upstream body raises.
    """
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise _not_json(f"the upstream sent a {encoding}-encoded JSON answer; it cannot be masked")
    if response.status == 206:
        raise _not_json("a partial (206) JSON answer cannot be masked")
    declared = response.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    body = bytearray()
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
    """``body`` parsed, masked and serialised again, and how many values were masked."""
    try:
        document = json.loads(
            body.decode(charset) if charset else body,
            parse_constant=_no_constants,
            parse_float=_finite,
        )
        masked = apply_masks(document, masks)
        return json.dumps(document, separators=(",", ":")).encode("ascii"), masked
    except JSONPathError:  # before RecursionError: the library's is a subclass of both
        raise _not_json("the upstream's JSON nests too deeply to be masked") from None
    except LookupError:
        raise _not_json(f"the upstream declared an unknown charset {charset!r}") from None
    except (ValueError, RecursionError):  # includes UnicodeDecodeError, JSONDecodeError
        raise _not_json("the upstream's answer is not valid JSON; it cannot be masked") from None
