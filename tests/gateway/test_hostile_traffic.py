"""The hostile-traffic suite, part one: what a caller sends (issue 4, "Security").

One table, one test. Each case is a request written byte for byte (no client library
normalises it) against a grant of ``GET /v1/projects/42/**`` on the demo upstream, unless
the case says otherwise, and one of three outcomes:

* **refused by the gateway** (``code`` set): the problem's status and code, the upstream
  never reached, and an ``access.denied`` event naming the same reason
  (:meth:`Harness.assert_denied`);
* **refused by the HTTP parser** (``code`` one of :data:`PARSER_REASONS`): the same, before
  any handler runs, so the one event names nobody (no principal, API or grant) and holds
  nothing of what was sent (no method, target or header), and the connection is closed;
* **forwarded** (``code`` None): the positive controls and the rules that admit (a granted
  GET admits HEAD; the auth scheme is case-insensitive), with exactly one upstream hit
  and an ``access.allowed`` event.

The tests after the table cover what is special to parser refusals: the bytes after one
are never read, and their audit events apply back-pressure within a bounded backlog.

Part two (:mod:`tests.gateway.test_hostile_upstream`) covers what reaches the upstream,
secrets, limits, timeouts and upstream addresses.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from jitgate.audit.events import EventType, NewEvent
from jitgate.gateway.app import create_gateway_server
from jitgate.gateway.enforce import Deny
from jitgate.gateway.protocol import ParserRefusals
from jitgate.gateway.proxy import Proxy
from jitgate.services import grants
from jitgate.tokens.grant_token import MAX_TOKEN_LENGTH
from tests.gateway.conftest import Harness, _parse_raw, serve
from tests.tokens import forge

pytestmark = pytest.mark.anyio

GRANT = ("GET /v1/projects/42/**",)
IN = "/demo/v1/projects/42/x"  # in scope
Headers = list[tuple[str, str]]


def wire(method: str, target: str, headers: Headers, body: bytes = b"") -> bytes:
    """A request as bytes: exactly these headers, plus Host, Content-Length and close."""
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: gateway.test",
        *(f"{k}: {v}" for k, v in headers),
    ]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Given:
    """What a case may use: the harness, the grant's token and its claims."""

    gw: Harness
    issued: grants.IssuedToken

    @property
    def token(self) -> str:
        return self.issued.token

    @property
    def claims(self) -> dict[str, Any]:
        return forge.decode_part(self.token, 1)

    @property
    def kid(self) -> str:
        return self.gw.ctx.keyring.signing_kid

    def signed(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """Our real key over the real claims with ``claims`` changed (``DROP``: left out)."""
        body = {k: v for k, v in (self.claims | claims).items() if v is not DROP}
        return forge.compact(
            header or forge.header(self.kid), body, forge.ed25519(self.gw.ctx.keyring.signing_key)
        )


DROP = object()
Prepare = Callable[[Given], bytes]


def send(
    method: str = "GET",
    target: str = IN,
    *,
    auth: Callable[[Given], list[str]] | None = None,
    headers: Headers | None = None,
    body: bytes = b"",
) -> Prepare:
    """A request carrying the grant's token (or the Authorization values ``auth`` makes);
    ``{t}`` anywhere in the target or headers stands for the token."""

    def prepare(g: Given) -> bytes:
        values = auth(g) if auth else [f"Bearer {g.token}"]
        sent = [("Authorization", v) for v in values] + list(headers or [])
        return wire(method, target, sent, body).replace(b"{t}", g.token.encode())

    return prepare


def bearer(make: Callable[[Given], str]) -> Callable[[Given], list[str]]:
    return lambda g: [f"Bearer {make(g)}"]


def token(make: Callable[[Given], str]) -> Prepare:
    return send(auth=bearer(make))


def raw(template: bytes) -> Prepare:
    """Bytes as written, with ``{t}`` replaced by the grant token."""
    return lambda g: template.replace(b"{t}", g.token.encode())


def at(offset: float, *, leeway: float = 0.0, of: str = "exp") -> Prepare:
    """The in-scope call, with the clock moved to the token's ``exp``/``nbf`` + ``offset``."""

    def prepare(g: Given) -> bytes:
        g.gw.enforcer.leeway = leeway
        g.gw.clock.advance(g.claims[of] + offset - g.gw.clock.timestamp())
        g.gw.view.resync()  # a moved clock would otherwise find the view stale
        return send()(g)

    return prepare


def ended(*, by_grantee: bool) -> Prepare:
    def prepare(g: Given) -> bytes:
        actor = g.gw.alice if by_grantee else g.gw.root
        grants.revoke(g.gw.ctx, actor, g.issued.grant.id, "" if by_grantee else "incident")
        return send()(g)

    return prepare


def _b64(text: str) -> str:
    return forge.b64url(text.encode())


@dataclass(frozen=True)
class Case:
    id: str
    prepare: Prepare
    status: int
    code: str | None  # the audited refusal reason; None: forwarded
    scopes: tuple[str, ...] = GRANT
    audited_api: str | None = "demo"
    starts_in: float = 0.0  # seconds until the grant starts


def _forward(
    prepare: Prepare, status: int = 200, scopes: tuple[str, ...] = GRANT
) -> dict[str, Any]:
    return {"prepare": prepare, "status": status, "code": None, "scopes": scopes}


# The reasons of refusals by the HTTP parser (docs/gateway.md).
LINE = "request-line-malformed"
MALFORMED = "request-malformed"
HEADERS = "headers-too-large"
TARGET = "target-too-long"
PARSER_REASONS = frozenset({LINE, MALFORMED, HEADERS, TARGET})


def _parser(
    prepare: Prepare, status: int, code: str, scopes: tuple[str, ...] = GRANT
) -> dict[str, Any]:
    assert code in PARSER_REASONS
    return {"prepare": prepare, "status": status, "code": code, "scopes": scopes}


TOKENS = [
    Case(
        "alg-none",
        token(lambda g: forge.compact(forge.header(g.kid, alg="none"), g.claims, None)),
        401,
        "token-algorithm",
    ),
    Case(
        "alg-nOnE",
        token(lambda g: forge.compact(forge.header(g.kid, alg="nOnE"), g.claims, None)),
        401,
        "token-algorithm",
    ),
    Case(
        "alg-none-our-signature",
        token(lambda g: g.signed(forge.header(g.kid, alg="none"))),
        401,
        "token-algorithm",
    ),
    Case(
        "alg-eddsa-lowercase",
        token(lambda g: g.signed(forge.header(g.kid, alg="eddsa"))),
        401,
        "token-algorithm",
    ),
    Case(
        "alg-hs256-keyed-with-public-key",
        token(
            lambda g: forge.compact(
                forge.header(g.kid, alg="HS256"),
                g.claims,
                forge.hs256_with_public_key(g.gw.ctx.keyring.signing_key),
            )
        ),
        401,
        "token-algorithm",
    ),
    Case(
        "kid-path-traversal",
        token(lambda g: g.signed(forge.header("../../../../etc/passwd"))),
        401,
        "token-key",
    ),
    Case("kid-very-long", token(lambda g: g.signed(forge.header("k" * 1500))), 401, "token-key"),
    Case("kid-sql", token(lambda g: g.signed(forge.header("' OR '1'='1"))), 401, "token-key"),
    # PyJWT refuses a kid that is not a string while reading the header.
    Case(
        "kid-number",
        token(lambda g: g.signed(forge.header(g.kid) | {"kid": 1})),
        401,
        "token-malformed",
    ),
    Case(
        "kid-object",
        token(lambda g: g.signed(forge.header(g.kid) | {"kid": {"k": g.kid}})),
        401,
        "token-malformed",
    ),
    Case(
        "embedded-jwk",
        token(lambda g: g.signed(forge.header(g.kid, jwk={"kty": "OKP"}))),
        401,
        "token-header",
    ),
    Case(
        "embedded-jku",
        token(lambda g: g.signed(forge.header(g.kid, jku="https://a.test/k"))),
        401,
        "token-header",
    ),
    Case(
        "embedded-x5u",
        token(lambda g: g.signed(forge.header(g.kid, x5u="https://a.test/c"))),
        401,
        "token-header",
    ),
    Case(
        "embedded-x5c",
        token(lambda g: g.signed(forge.header(g.kid, x5c=["MIIB"]))),
        401,
        "token-header",
    ),
    Case("typ-jwt", token(lambda g: g.signed(forge.header(g.kid, typ="JWT"))), 401, "token-type"),
    Case(
        "typ-missing", token(lambda g: g.signed({"alg": "EdDSA", "kid": g.kid})), 401, "token-type"
    ),
    Case("iss-other", token(lambda g: g.signed(iss="http://evil.test")), 401, "token-issuer"),
    Case("aud-other-api", token(lambda g: g.signed(aud="echo")), 403, "token-audience"),
    *(
        Case(f"claim-missing-{c}", token(lambda g, c=c: g.signed(**{c: DROP})), 401, "token-claims")
        for c in ("iss", "sub", "aud", "jti", "gid", "scope", "iat", "nbf", "exp")
    ),
    Case("expired", at(0), 403, "token-expired"),
    Case("expired-within-skew", at(3, leeway=5), 200, None),
    Case("expired-beyond-skew", at(5, leeway=5), 403, "token-expired"),
    Case("not-yet-valid", send(), 403, "token-not-yet-valid", starts_in=60),
    Case("not-yet-valid-within-skew", at(-3, leeway=5, of="nbf"), 200, None, starts_in=60),
    Case(
        "not-yet-valid-beyond-skew",
        at(-6, leeway=5, of="nbf"),
        403,
        "token-not-yet-valid",
        starts_in=60,
    ),
    Case("grant-revoked", ended(by_grantee=False), 403, "grant-revoked"),
    Case("grant-released", ended(by_grantee=True), 403, "grant-revoked"),
    Case("bad-base64", send(auth=lambda g: ["Bearer !!!.@@@.###"]), 401, "token-malformed"),
    Case("two-segments", token(lambda g: g.token.rpartition(".")[0]), 401, "token-malformed"),
    Case("four-segments", token(lambda g: g.token + ".e30"), 401, "token-malformed"),
    Case(
        "header-not-json",
        token(lambda g: f"{_b64('not json')}.{g.token.split('.', 1)[1]}"),
        401,
        "token-malformed",
    ),
    Case(
        "header-json-array",
        token(lambda g: f"{_b64('[1]')}.{g.token.split('.', 1)[1]}"),
        401,
        "token-malformed",
    ),
    Case(
        "oversized", token(lambda g: g.signed(pad="x" * MAX_TOKEN_LENGTH)), 401, "token-malformed"
    ),
    Case(
        "two-authorization-headers",
        send(auth=lambda g: [f"Bearer {g.token}"] * 2),
        401,
        "token-ambiguous",
    ),
    Case(
        "token-in-query",
        send(target=IN + "?access_token={t}", auth=lambda g: []),
        401,
        "token-missing",
    ),
    Case(
        "token-in-cookie",
        send(auth=lambda g: [], headers=[("Cookie", "token={t}")]),
        401,
        "token-missing",
    ),
    Case(
        "basic-scheme",
        send(auth=lambda g: [f"Basic {_b64('alice:' + g.token)}"]),
        401,
        "token-malformed",
    ),
    Case("no-scheme", send(auth=lambda g: [g.token]), 401, "token-malformed"),
    # RFC 9110 11.1: the auth scheme is case-insensitive; the token itself is not.
    Case("bearer-lowercase-is-accepted", send(auth=lambda g: [f"bearer {g.token}"]), 200, None),
]

P = "/demo/v1/projects"
SCOPE = [
    *(
        Case(f"dots-{name}", send(target=f"{P}/42/{seg}/43"), 400, "ambiguous-path")
        for name, seg in [
            ("plain", ".."),
            ("single", "."),
            ("encoded-lower", "%2e%2e"),
            ("encoded-upper", "%2E%2E"),
            ("encoded-mixed", ".%2e"),
            ("double-encoded", "%252e%252e"),
            ("with-params", "..;x=1"),
            ("overlong-2-byte", "%c0%ae%c0%ae"),
            ("overlong-3-byte", "%e0%80%ae"),
            ("fullwidth", "%ef%bc%8e%ef%bc%8e"),
        ]
    ),
    *(
        Case(f"slash-{name}", send(target=f"{P}/42/{seg}"), 400, "ambiguous-path")
        for name, seg in [
            ("encoded-lower", "x%2f..%2f..%2f43"),
            ("encoded-upper", "x%2F..%2F..%2F43"),
            ("double-encoded", "x%252f..%252f43"),
            ("backslash-encoded", "x%5c..%5c43"),
            ("backslash-raw", "x\\..\\43"),
            ("fullwidth", "x%ef%bc%8f..%ef%bc%8f43"),
            ("double", "/x"),
            ("nul", "x%00"),
            ("newline", "x%0a"),
            ("carriage-return", "x%0d"),
            ("del", "x%7f"),
            ("c1-control", "x%c2%85"),
            ("bad-escape", "x%zz"),
        ]
    ),
    # Raw bytes the request line must not carry: llhttp refuses control characters and
    # non-ASCII (the gateway's own check, "raw character outside printable ASCII", is the
    # second line of defence behind it).
    Case(
        "raw-nul",
        **_parser(raw(b"GET /demo/v1/projects/42/x\x00 HTTP/1.1\r\nHost: g\r\n\r\n"), 400, LINE),
    ),
    Case(
        "raw-control",
        **_parser(raw(b"GET /demo/v1/projects/42/x\x01y HTTP/1.1\r\nHost: g\r\n\r\n"), 400, LINE),
    ),
    Case(
        "raw-utf8-fullwidth-dots",
        # llhttp refuses raw non-ASCII in the target; encoded, it is ambiguous-path
        **_parser(
            raw(
                b"GET /demo/v1/projects/42/\xef\xbc\x8e\xef\xbc\x8e/43 HTTP/1.1\r\nHost: g\r\n"
                b"Authorization: Bearer {t}\r\nConnection: close\r\n\r\n"
            ),
            400,
            LINE,
        ),
    ),
    # Trailing slash: significant. "/**" admits both; an exact pattern only its own form.
    Case("trailing-slash-under-open-grant", **_forward(send(target=f"{P}/42/"))),
    Case("no-trailing-slash-under-open-grant", **_forward(send(target=f"{P}/42"))),
    Case(
        "trailing-slash-added",
        send(target=f"{P}/42/"),
        403,
        "out-of-scope",
        scopes=("GET /v1/projects/42",),
    ),
    Case(
        "trailing-slash-removed",
        send(target=f"{P}/42"),
        403,
        "out-of-scope",
        scopes=("GET /v1/projects/42/",),
    ),
    Case("case-version", send(target="/demo/V1/projects/42/x"), 403, "out-of-scope"),
    Case("case-collection", send(target="/demo/v1/PROJECTS/42/x"), 403, "out-of-scope"),
    Case(
        "case-api", send(target="/DEMO/v1/projects/42/x"), 403, "token-audience", audited_api=None
    ),
    Case("params-on-id", send(target=f"{P}/42;id=43/x"), 403, "out-of-scope"),
    Case("params-on-collection", send(target=f"{P};x/42/x"), 403, "out-of-scope"),
    Case("other-id", send(target=f"{P}/43/x"), 403, "out-of-scope"),
    Case("fullwidth-digits", send(target=f"{P}/%ef%bc%94%ef%bc%92/x"), 403, "out-of-scope"),
    Case(
        "absolute-form-other-host",
        send(target="http://other.test/demo/v1/projects/42/x"),
        400,
        "ambiguous-path",
        audited_api=None,
    ),
    Case(
        "absolute-form-upstream",
        send(target="http://127.0.0.1/v1/projects/42/x"),
        400,
        "ambiguous-path",
        audited_api=None,
    ),
    Case("asterisk-form", send("OPTIONS", "*"), 400, "ambiguous-path", audited_api=None),
    # "*" is one non-empty segment and never crosses "/".
    Case("star-one-segment", **_forward(send(target=f"{P}/42"), scopes=("GET /v1/projects/*",))),
    Case(
        "star-two-segments",
        send(target=f"{P}/42/43"),
        403,
        "out-of-scope",
        scopes=("GET /v1/projects/*",),
    ),
    Case(
        "star-empty-segment",
        send(target=f"{P}/"),
        403,
        "out-of-scope",
        scopes=("GET /v1/projects/*",),
    ),
    Case("star-no-segment", send(target=P), 403, "out-of-scope", scopes=("GET /v1/projects/*",)),
    Case(
        "star-encoded-slash",
        send(target=f"{P}/42%2f43"),
        400,
        "ambiguous-path",
        scopes=("GET /v1/projects/*",),
    ),
]

POST_GRANT = ("POST /v1/projects/42/**",)
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
METHODS = [
    *(
        Case(f"override-{name}", send(headers=[(name, "DELETE")]), 400, "method-override")
        for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")
    ),
    Case("override-query", send(target=IN + "?_method=DELETE"), 400, "method-override"),
    Case(
        "override-query-encoded", send(target=IN + "?a=1&%5Fmethod=DELETE"), 400, "method-override"
    ),
    Case(
        "override-form",
        send("POST", headers=FORM, body=b"a=1&_method=DELETE"),
        400,
        "method-override",
        scopes=POST_GRANT,
    ),
    Case(
        "override-form-encoded",
        send("POST", headers=FORM, body=b"%5Fmethod=PUT"),
        400,
        "method-override",
        scopes=POST_GRANT,
    ),
    Case(
        "override-form-charset",
        send(
            "POST",
            headers=[("Content-Type", "Application/X-WWW-Form-Urlencoded; charset=utf-8")],
            body=b"_method=DELETE",
        ),
        400,
        "method-override",
        scopes=POST_GRANT,
    ),
    Case(
        "override-untyped-body",
        send("POST", body=b"_method=DELETE"),
        400,
        "method-override",
        scopes=POST_GRANT,
    ),
    Case(
        "form-without-override",
        **_forward(send("POST", headers=FORM, body=b"a=1&method=x"), scopes=POST_GRANT),
    ),
    Case(
        "json-is-not-a-form",
        **_forward(
            send(
                "POST", headers=[("Content-Type", "application/json")], body=b'{"_method":"DELETE"}'
            ),
            scopes=POST_GRANT,
        ),
    ),
    # llhttp parses methods case-sensitively: "get" is no method at all.
    Case("method-lowercase", **_parser(send("get"), 400, LINE)),
    Case("method-trace", send("TRACE"), 405, "method-not-allowed"),
    Case("method-connect", send("CONNECT"), 405, "method-not-allowed"),
    Case("method-unknown", send("PROPFIND"), 405, "method-not-allowed"),
    Case("head-with-get-grant", **_forward(send("HEAD"))),  # SPEC: a granted GET admits HEAD
    Case("options-with-get-grant", send("OPTIONS"), 403, "out-of-scope"),
    Case(
        "post-with-get-grant",
        send("POST", body=b"{}", headers=[("Content-Type", "application/json")]),
        403,
        "out-of-scope",
    ),
    Case("delete-with-get-grant", send("DELETE"), 403, "out-of-scope"),
]

_PREFIX = b"POST /demo/v1/projects/42/x HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {t}\r\n"
FRAMING = [
    # Request smuggling: the parser refuses before the gateway sees a request.
    Case(
        "cl-and-te",
        **_parser(
            raw(_PREFIX + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            400,
            MALFORMED,
            scopes=POST_GRANT,
        ),
    ),
    Case(
        "two-content-lengths",
        **_parser(
            raw(_PREFIX + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"),
            400,
            MALFORMED,
            scopes=POST_GRANT,
        ),
    ),
    Case(
        "te-not-chunked",
        **_parser(
            raw(_PREFIX + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
            400,
            MALFORMED,
            scopes=POST_GRANT,
        ),
    ),
    Case("two-hosts", **_parser(send(headers=[("Host", "echo.test")]), 400, MALFORMED)),
    Case("header-name-with-space", **_parser(send(headers=[("X Y", "1")]), 400, MALFORMED)),
    # Oversized heads: 431 (a header field over 8190 bytes, or over 128 fields), 414.
    Case("header-value-too-large", **_parser(send(headers=[("X-Big", "a" * 9000)]), 431, HEADERS)),
    Case(
        "header-name-too-large", **_parser(send(headers=[("X-" + "a" * 9000, "1")]), 431, HEADERS)
    ),
    Case(
        "too-many-headers",
        **_parser(send(headers=[(f"X-H{i}", "1") for i in range(130)]), 431, HEADERS),
    ),
    Case(
        "token-too-large-for-a-header",
        **_parser(send(auth=lambda g: ["Bearer " + "a" * 9000]), 431, HEADERS),
    ),
    Case("target-too-long", **_parser(send(target=IN + "?q=" + "a" * 17000), 414, TARGET)),
    # Upgrade named in Connection switches protocols in HTTP parsers: never proxied.
    Case(
        "upgrade-websocket",
        send(
            headers=[
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ]
        ),
        400,
        "upgrade-refused",
    ),
    Case(
        "upgrade-h2c",
        send(
            headers=[
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ]
        ),
        400,
        "upgrade-refused",
    ),
    # A lone Upgrade header switches nothing: it is a hop-by-hop header, dropped.
    Case("upgrade-without-connection", **_forward(send(headers=[("Upgrade", "websocket")]))),
]

CASES = TOKENS + SCOPE + METHODS + FRAMING


def _denied(reason: str) -> float:
    sample = REGISTRY.get_sample_value(
        "jitgate_gateway_decisions_total", {"outcome": "denied", "reason": reason}
    )
    return sample or 0.0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_hostile_request(gw: Harness, case: Case) -> None:
    starts_at = gw.clock.now() + timedelta(seconds=case.starts_in) if case.starts_in else None
    issued = gw.issue(list(case.scopes), starts_at=starts_at)
    request = case.prepare(Given(gw, issued))
    counted = _denied(case.code) if case.code else 0.0

    reply = await gw.raw(request)  # read until the gateway closes the connection

    if case.code in PARSER_REASONS:  # refused by the HTTP parser: no request was handled
        event = gw.assert_denied(reply, case.status, case.code, api=None)
        assert gw.sink.events == [event]
        assert (event.actor, event.principal, event.grant) == (None, None, None)
        assert set(event.data) == {"status", "reason", "detail"}  # nothing of what was sent
        assert _denied(case.code) == counted + 1
    elif case.code is not None:  # refused by the gateway, and audited
        event = gw.assert_denied(reply, case.status, case.code, api=case.audited_api)
        assert event.data["target"] == request.split(b" ")[1].decode("latin-1").partition("?")[0]
        if case.audited_api is not None and case.status == 403:
            assert event.grant == issued.grant.id  # a valid token: the grant is named
        assert _denied(case.code) == counted + 1
    else:  # forwarded: reached the upstream once, and audited as allowed
        assert reply.status == case.status, reply.body
        assert len(gw.hits) == 1
        (event,) = gw.events(EventType.ACCESS_ALLOWED)
        assert event.grant == issued.grant.id
        assert event.data["status"] == case.status


async def test_the_bytes_after_a_parser_refusal_are_never_read(gw: Harness) -> None:
    """A malformed request, then a good one on the same connection (no ``close``): one
    answer, the connection closed after it, the good request never handled."""
    token = gw.issue(list(GRANT)).token
    good = f"GET {IN} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {token}\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(b"get / HTTP/1.1\r\nHost: g\r\n\r\n" + good.encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=5)  # EOF: the gateway closed
    finally:
        writer.close()
    assert data.count(b"HTTP/1.") == 1
    gw.assert_denied(_parse_raw(data), 400, LINE, api=None)
    assert len(gw.sink.events) == 1


class _FullSink:
    """An audit sink with no room: ``try_submit`` refuses, ``submit`` waits for release."""

    healthy = True

    def __init__(self) -> None:
        self.events: list[NewEvent] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.waiting = 0
        self.most_waiting = 0
        self._lock = threading.Lock()

    def try_submit(self, event: NewEvent) -> bool:
        return False

    def submit(self, event: NewEvent) -> None:
        with self._lock:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        self.entered.set()
        self.release.wait(5)
        with self._lock:
            self.waiting -= 1
            self.events.append(event)


async def test_a_parser_refusal_is_answered_once_its_event_is_queued(gw: Harness) -> None:
    """Back-pressure: with the audit queue full, the refusal waits for room (in a worker
    thread, the event loop free), and only then is answered."""
    sink = _FullSink()
    proxy = Proxy(gw.enforcer, sink, gw.clock, connect_timeout=2.0, timeout=5.0)
    runner, port = await serve(create_gateway_server(proxy))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"get / HTTP/1.1\r\nHost: g\r\n\r\n")
        await writer.drain()
        answer = asyncio.ensure_future(reader.read())
        assert await asyncio.to_thread(sink.entered.wait, 5)
        done, _ = await asyncio.wait({answer}, timeout=0.1)
        assert not done, "answered before its audit event was queued"
        assert (await gw.call("GET", "/healthz")).status == 200  # the loop is not blocked
        sink.release.set()
        data = await asyncio.wait_for(answer, timeout=5)
        writer.close()
    finally:
        sink.release.set()
        await runner.cleanup()
        await proxy.close()
    reply = _parse_raw(data)
    assert (reply.status, reply.code) == (400, LINE)
    assert [e.data["reason"] for e in sink.events] == [LINE]


async def test_refusals_waiting_for_the_audit_queue_are_bounded(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood while the audit queue is full: at most ``backlog`` events wait (handed to
    the sink in order, one thread at a time); beyond it, each one is logged."""
    sink = _FullSink()
    refusals = ParserRefusals(sink, gw.clock, backlog=2)
    waiting = [refusals.record(Deny(400, LINE, "first")), refusals.record(Deny(431, HEADERS, "2"))]
    with caplog.at_level(logging.ERROR, logger="jitgate.gateway.protocol"):
        assert refusals.record(Deny(414, TARGET, "third")) is None
    assert f"parser refusal {TARGET} not recorded" in caplog.text
    sink.release.set()
    await asyncio.wait_for(asyncio.gather(*(w for w in waiting if w is not None)), timeout=5)
    assert all(w is not None and w.done() for w in waiting)
    assert [e.data["reason"] for e in sink.events] == [LINE, HEADERS]
    assert sink.most_waiting == 1
