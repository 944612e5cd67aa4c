"""Headers through the gateway: what goes upstream, what comes back.

To the upstream (:func:`upstream_headers`): the caller's headers minus its credential,
``Host``, the hop-by-hop headers and every header named in ``Connection``, the
forwarding and path-override headers a caller must not forge (:data:`INTERNAL_HEADERS`,
:data:`INTERNAL_PREFIXES`) and any copy of the upstream credential header, with
``Accept-Encoding: identity`` (the gateway must see the answer's bytes to scrub them),
and the credential injected last, so nothing the caller sends can remove or duplicate it.
Query injection (:func:`upstream_query`) replaces a caller's parameter of the same name.
From the upstream (:func:`response_headers`): its headers minus hop-by-hop ones, every
spelling of the secret in a value replaced by ``[redacted]`` (:func:`scrub`).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, unquote_plus

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from jitgate.gateway.view import Upstream

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# What the caller must not tell the upstream: who the client is and which URL it asked
# for are the gateway's to say (a spoofed X-Forwarded-For passes IP allow-lists), and
# X-Original-URL / X-Rewrite-URL make some frameworks route to another path than the one
# the scope was checked against. X-Jitgate-* is reserved for the gateway itself.
INTERNAL_HEADERS = frozenset({"forwarded", "x-real-ip", "x-rewrite-url"})
INTERNAL_PREFIXES = ("x-forwarded-", "x-original-", "x-jitgate-")


# Never forwarded upstream, whatever the call ("expect" is answered by the gateway
# itself, see _continue: forwarded, it makes the client library wait for an upstream
# "100 Continue" that may never come).
# "accept-encoding" is the gateway's to say: it must see the answer's bytes to scrub them.
_NOT_FORWARDED = frozenset(
    {"host", "authorization", "expect", "accept-encoding", *HOP_BY_HOP, *INTERNAL_HEADERS}
)


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """The header names that ``Connection`` lists (hop-by-hop for this one message)."""
    if "connection" not in headers:
        return frozenset()
    return frozenset(
        part.strip().lower()
        for value in headers.getall("connection")
        for part in value.split(",")
        if part.strip()
    )


def upstream_headers(headers: CIMultiDictProxy[str], upstream: Upstream) -> CIMultiDict[str]:
    named = _connection_named(headers)
    credential = upstream.header_name
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if (
            lower in _NOT_FORWARDED
            or lower in named
            or lower == credential
            or lower.startswith(INTERNAL_PREFIXES)
        ):
            continue
        out.add(key, value)
    out["Accept-Encoding"] = "identity"
    if credential:  # injected last: nothing the caller sent can remove it
        out[credential] = upstream.header_value
    return out


def upstream_query(query: str, upstream: Upstream) -> str:
    if upstream.query_name is None:
        return query
    kept = [
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]) != upstream.query_name
    ]
    kept.append(f"{quote(upstream.query_name)}={quote(upstream.secret.reveal(), safe='')}")
    return "&".join(kept)


def response_headers(
    headers: CIMultiDictProxy[str], spellings: tuple[str, ...]
) -> Iterable[tuple[str, str]]:
    """The upstream's headers minus hop-by-hop ones, each spelling of the secret redacted."""
    named = _connection_named(headers)
    for key, value in headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        yield key, scrub(value, spellings)


def scrub(value: str, spellings: tuple[str, ...]) -> str:
    for spelling in spellings:
        value = value.replace(spelling, "[redacted]")
    return value


def is_upgrade(request: web.BaseRequest) -> bool:
    """What HTTP parsers act on: ``Upgrade`` named in ``Connection`` (a lone ``Upgrade``
    header is only a hop-by-hop header, dropped like the others)."""
    return "upgrade" in request.headers and "upgrade" in _connection_named(request.headers)
