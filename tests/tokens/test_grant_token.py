"""Grant tokens: issue, verify (signature then time), and every refusal reason."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitgate.domain.models import Grant, GrantStatus, Limits
from jitgate.secrets import SecretBox
from jitgate.tokens.grant_token import (
    ALGORITHM,
    MAX_TOKEN_LENGTH,
    TOKEN_TYPE,
    GrantClaims,
    TokenFailure,
    check_time,
    issue,
    verify_signature,
)
from jitgate.tokens.keys import KeyRing, new_key
from tests.tokens import forge

ISSUER = "http://jitgate.test"
NOW = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def _ring(at: datetime = NOW) -> KeyRing:
    box = SecretBox(secrets.token_bytes(32))
    stored, _ = new_key(box, at)
    ring = KeyRing.from_stored([stored], box, at)
    assert ring is not None
    return ring


def _grant(**changes: Any) -> Grant:
    values: dict[str, Any] = {
        "id": "grt_0123456789abcdef",
        "request_id": "req_0123456789abcdef",
        "principal": "alice",
        "api": "payments",
        "scopes": ("GET /v1/charges/*", "POST /v1/refunds"),
        "not_before": NOW,
        "expires_at": NOW + timedelta(minutes=15),
        "status": GrantStatus.ACTIVE,
        "created_at": NOW,
    }
    return Grant(**(values | changes))


RING = _ring()


def test_issue_then_verify_round_trip() -> None:
    grant = _grant()
    token, jti = issue(grant, RING, ISSUER, NOW)

    header = jwt.get_unverified_header(token)
    assert header == {"alg": ALGORITHM, "typ": TOKEN_TYPE, "kid": RING.signing_kid}
    claims = verify_signature(token, RING.public_keys, ISSUER)
    assert claims == GrantClaims(
        principal="alice",
        api="payments",
        grant_id=grant.id,
        jti=jti,
        scopes=grant.scopes,
        not_before=NOW.timestamp(),
        expires=grant.expires_at.timestamp(),
        kid=RING.signing_kid,
    )
    assert check_time(claims, NOW.timestamp(), 0) is None


def test_usage_limits_travel_in_the_lim_claim() -> None:
    limits = Limits(max_calls=5, rate_calls=2, rate_window=timedelta(minutes=1))
    token, _ = issue(_grant(limits=limits), RING, ISSUER, NOW)
    assert forge.decode_part(token, 1)["lim"] == {"calls": 5, "rate": [2, 60]}
    claims = verify_signature(token, RING.public_keys, ISSUER)
    assert isinstance(claims, GrantClaims)
    assert (claims.max_calls, claims.rate) == (5, (2, 60.0))
    plain, _ = issue(_grant(), RING, ISSUER, NOW)
    assert "lim" not in forge.decode_part(plain, 1)


def test_claims_on_the_wire() -> None:
    grant = _grant()
    token, jti = issue(grant, RING, ISSUER, NOW + timedelta(seconds=30))
    assert forge.decode_part(token, 1) == {
        "iss": ISSUER,
        "sub": "alice",
        "aud": "payments",
        "jti": jti,
        "gid": grant.id,
        "scope": ["GET /v1/charges/*", "POST /v1/refunds"],
        "iat": int(NOW.timestamp()) + 30,
        "nbf": int(NOW.timestamp()),
        "exp": int(grant.expires_at.timestamp()),
    }


def test_every_token_has_its_own_jti() -> None:
    jtis = {issue(_grant(), RING, ISSUER, NOW)[1] for _ in range(50)}
    assert len(jtis) == 50
    assert all(len(j) >= 16 for j in jtis)


@given(micros=st.integers(min_value=0, max_value=999_999), minutes=st.integers(1, 24 * 60))
def test_exp_is_never_later_than_the_grants_expiry(micros: int, minutes: int) -> None:
    expires_at = NOW + timedelta(minutes=minutes, microseconds=micros)
    token, _ = issue(_grant(expires_at=expires_at), RING, ISSUER, NOW)
    claims = verify_signature(token, RING.public_keys, ISSUER)
    assert isinstance(claims, GrantClaims)
    assert claims.expires <= expires_at.timestamp()
    assert expires_at.timestamp() - claims.expires < 1
    # ... so the token is refused at the grant's expires_at, with no leeway.
    assert check_time(claims, expires_at.timestamp(), 0) is not None


def _valid_claims() -> dict[str, Any]:
    token, _ = issue(_grant(), RING, ISSUER, NOW)
    return forge.decode_part(token, 1)


def _sign(claims: dict[str, Any], **header: Any) -> str:
    return forge.compact(
        forge.header(RING.signing_kid) | header, claims, forge.ed25519(RING.signing_key)
    )


REFUSALS: list[tuple[str, Any, str]] = [
    ("empty", lambda: "", "token-malformed"),
    ("too-long", lambda: "a" * (MAX_TOKEN_LENGTH + 1), "token-malformed"),
    ("garbage", lambda: "not.a.jws", "token-malformed"),
    (
        "alg-none",
        lambda: forge.compact(forge.header(RING.signing_kid, alg="none"), _valid_claims(), None),
        "token-algorithm",
    ),
    (
        "alg-NONE",
        lambda: forge.compact(forge.header(RING.signing_kid, alg="NONE"), _valid_claims(), None),
        "token-algorithm",
    ),
    (
        "hs256-public-key",
        lambda: forge.compact(
            forge.header(RING.signing_kid, alg="HS256"),
            _valid_claims(),
            forge.hs256_with_public_key(RING.signing_key),
        ),
        "token-algorithm",
    ),
    ("alg-missing", lambda: _sign(_valid_claims(), alg=None), "token-algorithm"),
    ("typ-jwt", lambda: _sign(_valid_claims(), typ="JWT"), "token-type"),
    ("typ-lowercase-variant", lambda: _sign(_valid_claims(), typ="JIT+JWT"), "token-type"),
    ("jwk", lambda: _sign(_valid_claims(), jwk={"kty": "OKP"}), "token-header"),
    ("jku", lambda: _sign(_valid_claims(), jku="https://evil.test/jwks"), "token-header"),
    ("x5c", lambda: _sign(_valid_claims(), x5c=["MII"]), "token-header"),
    ("unknown-kid", lambda: _sign(_valid_claims(), kid="k-unknown"), "token-key"),
    ("wrong-iss", lambda: _sign(_valid_claims() | {"iss": "http://other.test"}), "token-issuer"),
    (
        "missing-gid",
        lambda: _sign({k: v for k, v in _valid_claims().items() if k != "gid"}),
        "token-claims",
    ),
    (
        "missing-iss",
        lambda: _sign({k: v for k, v in _valid_claims().items() if k != "iss"}),
        "token-claims",
    ),
    # PyJWT itself refuses a non-string sub while decoding.
    ("sub-not-string", lambda: _sign(_valid_claims() | {"sub": 7}), "token-malformed"),
    ("aud-not-string", lambda: _sign(_valid_claims() | {"aud": ["payments"]}), "token-claims"),
    ("nbf-not-number", lambda: _sign(_valid_claims() | {"nbf": "soon"}), "token-claims"),
    ("scope-of-numbers", lambda: _sign(_valid_claims() | {"scope": [1, 2]}), "token-claims"),
    *(
        (f"lim-{name}", lambda lim=lim: _sign(_valid_claims() | {"lim": lim}), "token-claims")
        for name, lim in [
            ("not-a-map", [3]),
            ("unknown-key", {"calls": 3, "bytes": 10}),
            ("zero-calls", {"calls": 0}),
            ("bool-calls", {"calls": True}),
            ("text-calls", {"calls": "3"}),
            ("rate-short", {"rate": [3]}),
            ("rate-zero-window", {"rate": [3, 0]}),
            ("rate-float", {"rate": [1.5, 1]}),
        ]
    ),
    (
        "tampered",
        lambda: forge.replace_claims(issue(_grant(), RING, ISSUER, NOW)[0], sub="mallory"),
        "token-signature",
    ),
    (
        "other-ring",
        lambda: issue(_grant(), _ring_with_kid(RING.signing_kid), ISSUER, NOW)[0],
        "token-signature",
    ),
]


def _ring_with_kid(kid: str) -> KeyRing:
    """Another private key that claims our ``kid``."""
    other = _ring()
    return KeyRing(signing_kid=kid, signing_key=other.signing_key, public_keys=other.public_keys)


@pytest.mark.parametrize(
    ("make", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_verify_signature_refuses(make: Any, reason: str) -> None:
    result = verify_signature(make(), RING.public_keys, ISSUER)
    assert isinstance(result, TokenFailure)
    assert result.reason == reason
    assert result.detail


def test_a_token_is_only_verified_by_the_key_named_in_its_kid() -> None:
    other = _ring()
    token, _ = issue(_grant(), RING, ISSUER, NOW)
    keys = {
        RING.signing_kid: other.signing_key.public_key(),
        other.signing_kid: RING.signing_key.public_key(),
    }
    result = verify_signature(token, keys, ISSUER)
    assert isinstance(result, TokenFailure)
    assert result.reason == "token-signature"


def _claims_at(nbf: float, exp: float) -> GrantClaims:
    return GrantClaims("alice", "payments", "grt_x", "jti", ("GET /**",), nbf, exp)


@pytest.mark.parametrize(
    ("now", "leeway", "reason"),
    [
        (1000.0, 0.0, None),
        (1999.999, 0.0, None),
        (2000.0, 0.0, "token-expired"),  # at exp exactly: refused
        (2000.0, 5.0, None),
        (2004.999, 5.0, None),
        (2005.0, 5.0, "token-expired"),
        (99_999.0, 5.0, "token-expired"),
        (999.999, 0.0, "token-not-yet-valid"),
        (995.0, 5.0, None),  # nbf - leeway: accepted
        (994.999, 5.0, "token-not-yet-valid"),
        (0.0, 5.0, "token-not-yet-valid"),
    ],
)
def test_check_time_with_leeway(now: float, leeway: float, reason: str | None) -> None:
    result = check_time(_claims_at(nbf=1000.0, exp=2000.0), now, leeway)
    if reason is None:
        assert result is None
    else:
        assert isinstance(result, TokenFailure)
        assert result.reason == reason
