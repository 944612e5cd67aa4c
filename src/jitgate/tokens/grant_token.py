"""Issue and verify grant tokens (compact JWS, ``alg: EdDSA``, ``typ: jit+jwt``).

Wire format (append-only; claims are never renamed or given a new meaning):
header ``{alg: EdDSA, typ: jit+jwt, kid}``; claims ``iss, sub, aud, jti, gid, scope,
iat, nbf, exp`` with ``exp`` never later than the grant's ``expires_at``, and ``lim``
when the grant has usage limits: ``{"calls": N}`` (calls over the grant's life) and/or
``{"rate": [N, seconds]}`` (calls per window), which the gateway enforces; and ``msk``
when the grant has response masks: a list of RFC 9535 JSONPath strings (at most
:data:`~jitgate.domain.masks.MAX_MASKS`, each at most
:data:`~jitgate.domain.masks.MAX_MASK_LENGTH` characters) whose values the gateway
replaces in JSON responses, on top of the API's own masks. Being signed, ``msk`` can be
neither removed nor changed by the holder; a token without it masks only what the API
declares.

Verification is two separate steps: the signature (algorithm pinned to EdDSA, key
chosen by ``kid`` from our own key set only, any embedded key reference refused),
then the claims against an injected time. Every failure has a reason code.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from jitgate.domain.masks import MAX_MASK_LENGTH, MAX_MASKS
from jitgate.domain.models import Grant
from jitgate.tokens.keys import KeyRing

TOKEN_TYPE = "jit+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "EdDSA"
MAX_TOKEN_LENGTH = 4096
_REQUIRED = ("iss", "sub", "aud", "jti", "gid", "scope", "iat", "nbf", "exp")
_FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit")


@dataclass(frozen=True, slots=True)
class GrantClaims:
    principal: str
    api: str
    grant_id: str
    jti: str
    scopes: tuple[str, ...]
    not_before: float
    expires: float
    kid: str = ""  # the key that verified the signature (from the header, not a claim)
    max_calls: int | None = None
    rate: tuple[int, float] | None = None  # (calls, per seconds)
    masks: tuple[str, ...] = ()  # JSONPath texts, parsed by the gateway


@dataclass(frozen=True, slots=True)
class TokenFailure:
    reason: str  # machine code, e.g. "token-expired"
    detail: str


def issue(grant: Grant, ring: KeyRing, issuer: str, now: datetime) -> tuple[str, str]:
    """A signed token for ``grant`` and its ``jti``."""
    jti = secrets.token_urlsafe(16)
    claims = {
        "iss": issuer,
        "sub": grant.principal,
        "aud": grant.api,
        "jti": jti,
        "gid": grant.id,
        "scope": list(grant.scopes),
        "iat": int(now.timestamp()),
        "nbf": int(grant.not_before.timestamp()),
        "exp": int(grant.expires_at.timestamp()),  # floor: never later than expires_at
    }
    limits: dict[str, Any] = {}
    if grant.limits.max_calls is not None:
        limits["calls"] = grant.limits.max_calls
    if grant.limits.rate_calls is not None and grant.limits.rate_window is not None:
        limits["rate"] = [grant.limits.rate_calls, int(grant.limits.rate_window.total_seconds())]
    if limits:
        claims["lim"] = limits
    if grant.masks:
        claims["msk"] = list(grant.masks)
    token = jwt.encode(
        claims,
        ring.signing_key,
        algorithm=ALGORITHM,
        headers={"typ": TOKEN_TYPE, "kid": ring.signing_kid},
    )
    return token, jti


def verify_signature(
    token: str, public_keys: Mapping[str, Ed25519PublicKey], issuer: str
) -> GrantClaims | TokenFailure:
    """Step one: the token is ours and well-formed. Time is not looked at here."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return TokenFailure("token-malformed", "the token is empty or too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return TokenFailure("token-malformed", "the token is not a compact JWS")
    if header.get("alg") != ALGORITHM:
        return TokenFailure("token-algorithm", "only EdDSA-signed tokens are accepted")
    if header.get("typ") != TOKEN_TYPE:
        return TokenFailure("token-type", f"the token type must be {TOKEN_TYPE}")
    if any(name in header for name in _FORBIDDEN_HEADERS):
        return TokenFailure("token-header", "embedded keys and key references are refused")
    kid = header.get("kid")
    key = public_keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        return TokenFailure("token-key", "the token is signed by an unknown key")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=issuer,
            options={
                "require": list(_REQUIRED),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
            },
        )
    except jwt.InvalidSignatureError:
        return TokenFailure("token-signature", "the token signature does not verify")
    except jwt.InvalidIssuerError:
        return TokenFailure("token-issuer", "the token was not issued by this jitgate")
    except jwt.MissingRequiredClaimError as exc:
        return TokenFailure("token-claims", f"the token lacks the {exc.claim!r} claim")
    except jwt.PyJWTError:
        return TokenFailure("token-malformed", "the token could not be decoded")
    return _claims(claims, str(kid))  # a str: public_keys only has str keys


def _claims(c: dict[str, Any], kid: str) -> GrantClaims | TokenFailure:
    scope = c["scope"]
    numbers = (c["nbf"], c["exp"], c["iat"])
    if (
        not all(isinstance(c[k], str) for k in ("sub", "aud", "jti", "gid"))
        or not isinstance(scope, list)
        or not all(isinstance(s, str) for s in scope)
        or not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers)
    ):
        return TokenFailure("token-claims", "the token claims have the wrong types")
    limits = _limits(c.get("lim"))
    if isinstance(limits, TokenFailure):
        return limits
    masks = c.get("msk", [])
    if not (
        isinstance(masks, list)
        and len(masks) <= MAX_MASKS
        and all(isinstance(m, str) and 0 < len(m) <= MAX_MASK_LENGTH for m in masks)
    ):
        return TokenFailure("token-claims", "the token's response masks are malformed")
    return GrantClaims(
        principal=c["sub"],
        api=c["aud"],
        grant_id=c["gid"],
        jti=c["jti"],
        scopes=tuple(scope),
        not_before=float(c["nbf"]),
        expires=float(c["exp"]),
        kid=kid,
        max_calls=limits[0],
        rate=limits[1],
        masks=tuple(masks),
    )


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _limits(lim: object) -> tuple[int | None, tuple[int, float] | None] | TokenFailure:
    if lim is None:
        return None, None
    bad = TokenFailure("token-claims", "the token's usage limits are malformed")
    if not isinstance(lim, dict) or not set(lim) <= {"calls", "rate"}:
        return bad
    calls, rate = lim.get("calls"), lim.get("rate")
    if calls is not None and not _count(calls):
        return bad
    if rate is not None and not (
        isinstance(rate, list) and len(rate) == 2 and _count(rate[0]) and _count(rate[1])
    ):
        return bad
    return calls, None if rate is None else (rate[0], float(rate[1]))


def check_time(claims: GrantClaims, now: float, leeway: float) -> TokenFailure | None:
    """Step two: the token is in date at ``now``."""
    if now >= claims.expires + leeway:
        return TokenFailure("token-expired", "the grant token has expired")
    if now + leeway < claims.not_before:
        return TokenFailure("token-not-yet-valid", "the grant is not valid yet")
    return None
