"""Every way of presenting a bad grant token is refused before the upstream is reached.

Forged tokens are built from a real token's claims (:mod:`tests.tokens.forge`), so each
case changes exactly one thing; a correctly re-signed copy is the positive control.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jitgate.tokens.grant_token import MAX_TOKEN_LENGTH
from tests.gateway.conftest import Harness
from tests.tokens import forge

pytestmark = pytest.mark.anyio

TARGET = "/demo/v1/items"


@dataclass(frozen=True)
class Keys:
    kid: str
    key: Ed25519PrivateKey
    claims: dict[str, Any]
    token: str


def _keys(gw: Harness) -> Keys:
    issued = gw.issue(["GET /v1/**"])
    ring = gw.ctx.keyring
    return Keys(
        ring.signing_kid, ring.signing_key, forge.decode_part(issued.token, 1), issued.token
    )


_DROP = object()  # a claim value meaning "leave this claim out"
_attacker = Ed25519PrivateKey.generate()
_attacker_x = forge.b64url(_attacker.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
_attacker_jwk = {"kty": "OKP", "crv": "Ed25519", "x": _attacker_x}

Build = Callable[[Keys], list[str]]  # the Authorization header values to send


def _signed(k: Keys, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """Our real key over the real claims, with ``claims`` changed."""
    body = {name: value for name, value in (k.claims | claims).items() if value is not _DROP}
    return forge.compact(header or forge.header(k.kid), body, forge.ed25519(k.key))


def bearer(make: Callable[[Keys], str]) -> Build:
    return lambda k: [f"Bearer {make(k)}"]


def resigned(**claims: Any) -> Build:
    return bearer(lambda k: _signed(k, **claims))


def with_header(**header: Any) -> Build:
    return bearer(lambda k: _signed(k, forge.header(k.kid) | header))


def unsigned(alg: str) -> Build:
    return bearer(lambda k: forge.compact(forge.header(k.kid, alg=alg), k.claims, None))


def attacker_signed(**header: Any) -> Build:
    return bearer(
        lambda k: forge.compact(forge.header(k.kid, **header), k.claims, forge.ed25519(_attacker))
    )


def hs256_confusion(k: Keys) -> list[str]:
    sign = forge.hs256_with_public_key(k.key)
    return [f"Bearer {forge.compact(forge.header(k.kid, alg='HS256'), k.claims, sign)}"]


# (id, what to send, status, code)
CASES: list[tuple[str, Build, int, str]] = [
    ("missing", lambda k: [], 401, "token-missing"),
    ("not-a-jwt", lambda k: ["Bearer not-a-jwt"], 401, "token-malformed"),
    ("three-garbage-parts", lambda k: ["Bearer a.b.c"], 401, "token-malformed"),
    ("empty-bearer", lambda k: ["Bearer "], 401, "token-malformed"),
    ("scheme-only", lambda k: ["Bearer"], 401, "token-malformed"),
    ("basic-scheme", lambda k: ["Basic YWxpY2U6c2VjcmV0"], 401, "token-malformed"),
    ("token-without-scheme", lambda k: [k.token], 401, "token-malformed"),
    ("two-tokens-one-header", lambda k: [f"Bearer {k.token} {k.token}"], 401, "token-malformed"),
    ("two-authorization-headers", lambda k: [f"Bearer {k.token}"] * 2, 401, "token-ambiguous"),
    (
        "good-and-bad-authorization",
        lambda k: [f"Bearer {k.token}", "Bearer x"],
        401,
        "token-ambiguous",
    ),
    *(
        (f"alg-{alg}", unsigned(alg), 401, "token-algorithm")
        for alg in ("none", "None", "NONE", "nOnE")
    ),
    ("alg-none-with-real-signature", with_header(alg="none"), 401, "token-algorithm"),
    ("hs256-keyed-with-public-key", hs256_confusion, 401, "token-algorithm"),
    ("alg-ed25519-spelling", with_header(alg="Ed25519"), 401, "token-algorithm"),
    (
        "alg-missing",
        bearer(lambda k: _signed(k, {"typ": "jit+jwt", "kid": k.kid})),
        401,
        "token-algorithm",
    ),
    ("unknown-kid", with_header(kid="k-unknown"), 401, "token-key"),
    ("no-kid", bearer(lambda k: _signed(k, {"alg": "EdDSA", "typ": "jit+jwt"})), 401, "token-key"),
    # PyJWT refuses a non-string kid while reading the header.
    (
        "non-string-kid",
        bearer(lambda k: _signed(k, forge.header(k.kid) | {"kid": [k.kid]})),
        401,
        "token-malformed",
    ),
    ("our-kid-attacker-key", attacker_signed(), 401, "token-signature"),
    ("embedded-jwk", attacker_signed(jwk=_attacker_jwk), 401, "token-header"),
    ("embedded-jku", attacker_signed(jku="https://attacker.test/jwks.json"), 401, "token-header"),
    ("embedded-x5u", attacker_signed(x5u="https://attacker.test/cert.pem"), 401, "token-header"),
    ("embedded-x5c", attacker_signed(x5c=["MIIB"]), 401, "token-header"),
    ("embedded-x5t", attacker_signed(x5t="abc"), 401, "token-header"),
    ("embedded-jwk-our-signature", with_header(jwk=_attacker_jwk), 401, "token-header"),
    # PyJWT refuses unknown critical extensions while reading the header.
    ("crit-header", with_header(crit=["exp"]), 401, "token-malformed"),
    ("typ-jwt", with_header(typ="JWT"), 401, "token-type"),
    (
        "typ-missing",
        bearer(lambda k: _signed(k, {"alg": "EdDSA", "kid": k.kid})),
        401,
        "token-type",
    ),
    ("wrong-iss", resigned(iss="http://evil.test"), 401, "token-issuer"),
    ("iss-as-list", bearer(lambda k: _signed(k, iss=[k.claims["iss"]])), 401, "token-issuer"),
    ("aud-other-api", resigned(aud="echo"), 403, "token-audience"),
    ("aud-as-list", resigned(aud=["demo"]), 401, "token-claims"),
    *(
        (f"missing-{claim}", resigned(**{claim: _DROP}), 401, "token-claims")
        for claim in ("iss", "sub", "aud", "jti", "gid", "scope", "iat", "nbf", "exp")
    ),
    ("scope-as-string", resigned(scope="GET /**"), 401, "token-claims"),
    ("exp-as-string", bearer(lambda k: _signed(k, exp=str(k.claims["exp"]))), 401, "token-claims"),
    ("exp-as-bool", resigned(exp=True), 401, "token-claims"),
    ("invalid-scope", resigned(scope=["GET /v1/../**"]), 401, "token-claims"),
    (
        "tampered-scope",
        bearer(lambda k: forge.replace_claims(k.token, scope=["* /**"])),
        401,
        "token-signature",
    ),
    (
        "tampered-exp",
        bearer(lambda k: forge.replace_claims(k.token, exp=k.claims["exp"] + 86400)),
        401,
        "token-signature",
    ),
    (
        "signature-stripped",
        bearer(lambda k: k.token.rpartition(".")[0] + "."),
        401,
        "token-signature",
    ),
    ("oversized", resigned(pad="x" * MAX_TOKEN_LENGTH), 401, "token-malformed"),
]


@pytest.mark.parametrize(
    ("values", "status", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_bad_token_is_refused(
    gw: Harness, values: Callable[[Keys], list[str]], status: int, code: str
) -> None:
    keys = _keys(gw)
    headers = [("Authorization", value) for value in values(keys)]
    cached = len(gw.enforcer.cache)

    reply = await gw.call("GET", TARGET, headers=headers)

    gw.assert_denied(reply, status, code)
    if status != 403:  # a 403 token verified (then failed a per-call check): it may be cached
        assert len(gw.enforcer.cache) == cached, "a failed verification was cached"


async def test_a_correctly_resigned_copy_is_accepted(gw: Harness) -> None:
    """The positive control: the forging itself produces tokens the gateway accepts."""
    keys = _keys(gw)
    reply = await gw.call("GET", TARGET, _signed(keys, jti="another-jti"))
    assert reply.status == 200
    assert len(gw.hits) == 1


async def test_two_authorization_headers_sent_raw_are_refused(gw: Harness) -> None:
    token = gw.issue().token
    reply = await gw.raw_request(
        "GET", TARGET, token, headers=[("Authorization", f"Bearer {token}")]
    )
    gw.assert_denied(reply, 401, "token-ambiguous")


async def test_a_header_too_large_for_the_gateway_never_reaches_upstream(gw: Harness) -> None:
    reply = await gw.raw_request("GET", TARGET, "a" * 9000)
    assert reply.status == 431  # refused by the HTTP parser itself (limit 8190 bytes)
    assert gw.hits == []


async def test_a_token_for_another_api_is_refused_there(gw: Harness) -> None:
    echo_token = gw.issue(api="echo").token
    reply = await gw.call("GET", TARGET, echo_token)
    event = gw.assert_denied(reply, 403, "token-audience")
    assert event.principal == "alice"


async def test_failed_verification_is_not_cached_and_a_good_one_is(gw: Harness) -> None:
    good = gw.issue(["GET /v1/**"]).token
    bad = forge.replace_claims(good, scope=["* /**"])
    for _ in range(2):
        reply = await gw.call("GET", TARGET, bad)
        gw.assert_denied(reply, 401, "token-signature")
    assert len(gw.enforcer.cache) == 0
    assert gw.enforcer.cache.get(bad) is None

    reply = await gw.call("GET", TARGET, good)
    assert reply.status == 200
    assert len(gw.enforcer.cache) == 1
    cached = gw.enforcer.cache.get(good)
    assert cached is not None
    assert cached.claims.principal == "alice"

    # The bad token is still refused after the good one sits in the cache.
    reply = await gw.call("GET", TARGET, bad)
    gw.assert_denied(reply, 401, "token-signature", hits_before=1)
    assert len(gw.enforcer.cache) == 1
