"""Signing keys: the JWKS, which key signs, and how long a retired key stays accepted."""

from __future__ import annotations

import dataclasses
import secrets
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jitgate.clock import FrozenClock
from jitgate.domain.models import Grant, GrantStatus
from jitgate.errors import JitgateError
from jitgate.secrets import SecretBox
from jitgate.services.bootstrap import ensure_keyring
from jitgate.storage.directory_repo import StoredKey
from jitgate.storage.store import Store
from jitgate.tokens.grant_token import GrantClaims, TokenFailure, issue, verify_signature
from jitgate.tokens.keys import KeyRing, new_key
from tests.tokens import forge

ISSUER = "http://jitgate.test"
NOW = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)


def _grant(expires_at: datetime) -> Grant:
    return Grant(
        id="grt_0123456789abcdef",
        request_id="req_0123456789abcdef",
        principal="alice",
        api="payments",
        scopes=("GET /**",),
        not_before=NOW,
        expires_at=expires_at,
        status=GrantStatus.ACTIVE,
        created_at=NOW,
    )


@pytest.fixture
def box_() -> SecretBox:
    return SecretBox(secrets.token_bytes(32))


def test_jwks_shape(box_: SecretBox) -> None:
    first, _ = new_key(box_, NOW)
    second, _ = new_key(box_, NOW + timedelta(hours=1))
    retired = dataclasses.replace(
        first, retired_at=NOW + timedelta(hours=1), keep_until=NOW + timedelta(hours=2)
    )
    ring = KeyRing.from_stored([retired, second], box_, NOW + timedelta(hours=1))
    assert ring is not None

    jwks = ring.jwks()

    assert set(jwks) == {"keys"}
    assert [k["kid"] for k in jwks["keys"]] == sorted([first.kid, second.kid])
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    for stored in (first, second):
        key = by_kid[stored.kid]
        assert set(key) == {"kty", "crv", "use", "alg", "kid", "x"}  # never "d"
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == (
            "OKP",
            "Ed25519",
            "EdDSA",
            "sig",
        )
        assert "=" not in key["x"]  # base64url without padding
        assert forge.b64url_decode(key["x"]) == stored.public_key
        assert len(stored.public_key) == 32


def test_a_token_verifies_with_the_published_jwk(box_: SecretBox) -> None:
    stored, _ = new_key(box_, NOW)
    ring = KeyRing.from_stored([stored], box_, NOW)
    assert ring is not None
    token, _ = issue(_grant(NOW + timedelta(minutes=5)), ring, ISSUER, NOW)
    (published,) = ring.jwks()["keys"]
    key = jwt.PyJWK(published).key
    claims = jwt.decode(
        token,
        key,
        algorithms=["EdDSA"],
        audience="payments",
        issuer=ISSUER,
        options={"verify_exp": False},
    )
    assert claims["sub"] == "alice"


def test_the_newest_unretired_key_signs(box_: SecretBox) -> None:
    old, _ = new_key(box_, NOW)
    newer, _ = new_key(box_, NOW + timedelta(minutes=1))
    newest_retired, _ = new_key(box_, NOW + timedelta(minutes=2))
    newest_retired = dataclasses.replace(
        newest_retired, retired_at=NOW, keep_until=NOW + timedelta(days=1)
    )
    ring = KeyRing.from_stored([old, newer, newest_retired], box_, NOW)
    assert ring is not None
    assert ring.signing_kid == newer.kid
    assert set(ring.public_keys) == {old.kid, newer.kid, newest_retired.kid}
    assert (
        ring.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        == newer.public_key
    )


def test_no_ring_without_an_active_key(box_: SecretBox) -> None:
    stored, _ = new_key(box_, NOW)
    retired = dataclasses.replace(stored, retired_at=NOW, keep_until=NOW + timedelta(hours=1))
    assert KeyRing.from_stored([retired], box_, NOW) is None
    assert KeyRing.from_stored([], box_, NOW) is None


def test_private_key_ciphertext_is_bound_to_its_kid(box_: SecretBox) -> None:
    stored, _ = new_key(box_, NOW)
    other, _ = new_key(box_, NOW)
    swapped = dataclasses.replace(stored, private_ciphertext=other.private_ciphertext)
    with pytest.raises(JitgateError):
        KeyRing.from_stored([swapped], box_, NOW)


def test_private_key_needs_the_master_key(box_: SecretBox) -> None:
    stored, _ = new_key(box_, NOW)
    with pytest.raises(JitgateError):
        KeyRing.from_stored([stored], SecretBox(secrets.token_bytes(32)), NOW)


def _rotate(store: Store, box: SecretBox, at: datetime, keep_until: datetime) -> StoredKey:
    """A new signing key; the current one retired and kept until ``keep_until``."""
    with store.transaction() as tx:
        current = [k for k in tx.directory.list_keys() if k.retired_at is None]
        stored, _ = new_key(box, at)
        tx.directory.insert_key(stored)
        for key in current:
            tx.directory.retire_key(key.kid, at, keep_until)
    return stored


def _ring_at(store: Store, box: SecretBox, at: datetime) -> KeyRing:
    with store.transaction() as tx:
        ring = KeyRing.from_stored(tx.directory.list_keys(), box, at)
    assert ring is not None
    return ring


def test_rotation_keeps_a_retired_key_until_keep_until(
    store: Store, box: SecretBox, clock: FrozenClock
) -> None:
    before = ensure_keyring(store, box, clock)
    old_token, _ = issue(_grant(clock.now() + timedelta(minutes=30)), before, ISSUER, clock.now())

    clock.advance(timedelta(minutes=1))
    keep_until = clock.now() + timedelta(minutes=29)
    new = _rotate(store, box, clock.now(), keep_until)
    after = _ring_at(store, box, clock.now())

    # The new key signs; the retired one is still published and still verifies.
    assert after.signing_kid == new.kid != before.signing_kid
    assert set(after.public_keys) == {before.signing_kid, new.kid}
    assert {k["kid"] for k in after.jwks()["keys"]} == {before.signing_kid, new.kid}
    assert isinstance(verify_signature(old_token, after.public_keys, ISSUER), GrantClaims)
    new_token, _ = issue(_grant(clock.now() + timedelta(minutes=5)), after, ISSUER, clock.now())
    assert jwt.get_unverified_header(new_token)["kid"] == new.kid

    # Just before keep_until it is still there; at keep_until it is gone for good.
    just_before = _ring_at(store, box, keep_until - timedelta(microseconds=1))
    assert before.signing_kid in just_before.public_keys
    gone = _ring_at(store, box, keep_until)
    assert set(gone.public_keys) == {new.kid}
    assert {k["kid"] for k in gone.jwks()["keys"]} == {new.kid}
    refused = verify_signature(old_token, gone.public_keys, ISSUER)
    assert isinstance(refused, TokenFailure)
    assert refused.reason == "token-key"
    # ensure_keyring keeps using the rotated ring rather than creating yet another key
    assert ensure_keyring(store, box, FrozenClock(keep_until)).signing_kid == new.kid
