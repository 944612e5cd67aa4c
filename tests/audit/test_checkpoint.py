"""Signed checkpoints: signing, verification, and catching a rewritten or truncated chain."""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from jitgate.audit.chain import GENESIS_HASH, canonical_json, link, recompute_hash, verify_events
from jitgate.audit.checkpoint import (
    Checkpoint,
    check_against_chain,
    sign_checkpoint,
    verify_checkpoint_signature,
)
from jitgate.audit.events import ChainedEvent, EventType, NewEvent
from jitgate.errors import InvalidInput

T0 = datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
# Fixed seeds: deterministic tests, and no randomness drawn outside the test's control.
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUBLIC = {"k1": KEY.public_key()}
HASH = "ab" * 32


def chain_of(n: int) -> list[ChainedEvent]:
    chain: list[ChainedEvent] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        event = NewEvent(EventType.ACCESS_ALLOWED, T0 + timedelta(seconds=seq), data={"i": seq})
        chain.append(link(prev, seq, event))
        prev = chain[-1].hash
    return chain


def sign(seq: int = 5, hash_: str = HASH, at: datetime = T0, kid: str = "k1") -> Checkpoint:
    return sign_checkpoint(seq, hash_, at, kid, KEY)


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def flip(text: str, index: int) -> str:
    """``text`` with the base64url character at ``index`` changed."""
    return text[:index] + B64URL[(B64URL.index(text[index]) + 1) % 64] + text[index + 1 :]


# -- sign and verify ----------------------------------------------------------------


def test_signed_checkpoint_verifies() -> None:
    cp = sign()
    assert verify_checkpoint_signature(cp, PUBLIC)
    assert len(cp.signature) == 86
    assert "=" not in cp.signature


def test_signature_is_over_the_canonical_payload() -> None:
    cp = sign()
    payload = {"v": 1, "seq": 5, "hash": HASH, "at": "2026-01-05T10:00:00.000000Z", "kid": "k1"}
    assert cp.as_dict() == {**payload, "signature": cp.signature}
    # Anyone holding the public key can check an export without jitgate's code.
    KEY.public_key().verify(base64.urlsafe_b64decode(cp.signature + "=="), canonical_json(payload))


def test_the_same_instant_in_another_timezone_still_verifies() -> None:
    cp = sign()
    moved = dataclasses.replace(cp, at=cp.at.astimezone(timezone(timedelta(hours=-5))))
    assert verify_checkpoint_signature(moved, PUBLIC)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda cp: dataclasses.replace(cp, seq=cp.seq + 1),
        lambda cp: dataclasses.replace(cp, seq=cp.seq - 1),
        lambda cp: dataclasses.replace(cp, hash="cd" * 32),
        lambda cp: dataclasses.replace(cp, at=cp.at + timedelta(microseconds=1)),
        lambda cp: dataclasses.replace(cp, key_id="k2"),
        lambda cp: dataclasses.replace(cp, signature=flip(cp.signature, 0)),
        lambda cp: dataclasses.replace(cp, signature=flip(cp.signature, 40)),
        lambda cp: dataclasses.replace(cp, signature=cp.signature + "=="),
        lambda cp: dataclasses.replace(cp, signature=cp.signature[:-1]),
        lambda cp: dataclasses.replace(cp, signature="not base64!"),
        lambda cp: dataclasses.replace(cp, at=cp.at.replace(tzinfo=None)),
    ],
)
def test_tampered_checkpoint_fails(tamper: Any) -> None:
    keys = {**PUBLIC, "k2": OTHER_KEY.public_key()}
    assert not verify_checkpoint_signature(tamper(sign()), keys)


def test_non_canonical_signature_encoding_fails() -> None:
    # The last character carries 2 bits; the other 4 must be zero.
    cp = sign()
    twin = cp.signature[:-1] + B64URL[B64URL.index(cp.signature[-1]) | 1]
    assert base64.urlsafe_b64decode(twin + "==") == base64.urlsafe_b64decode(cp.signature + "==")
    assert not verify_checkpoint_signature(dataclasses.replace(cp, signature=twin), PUBLIC)


def test_wrong_or_unknown_key_fails() -> None:
    cp = sign_checkpoint(5, HASH, T0, "k1", OTHER_KEY)
    assert not verify_checkpoint_signature(cp, PUBLIC)
    assert not verify_checkpoint_signature(sign(kid="k9"), PUBLIC)
    assert not verify_checkpoint_signature(sign(), {})


def test_key_rotation_verifies_each_checkpoint_with_its_own_key() -> None:
    old, new = sign(kid="k1"), sign_checkpoint(9, HASH, T0, "k2", OTHER_KEY)
    keys = {"k1": KEY.public_key(), "k2": OTHER_KEY.public_key()}
    assert verify_checkpoint_signature(old, keys)
    assert verify_checkpoint_signature(new, keys)


@pytest.mark.parametrize(
    ("seq", "hash_", "at", "kid"),
    [
        (0, HASH, T0, "k1"),
        (True, HASH, T0, "k1"),
        (5, "AB" * 32, T0, "k1"),
        (5, "ab", T0, "k1"),
        (5, HASH, datetime(2026, 1, 5), "k1"),
        (5, HASH, T0, ""),
    ],
)
def test_sign_rejects_bad_input(seq: int, hash_: str, at: datetime, kid: str) -> None:
    with pytest.raises(InvalidInput):
        sign_checkpoint(seq, hash_, at, kid, KEY)


@settings(max_examples=25, deadline=None)
@given(
    seq=st.integers(1, 2**40),
    hash_=st.text("0123456789abcdef", min_size=64, max_size=64),
    at=st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)),
    kid=st.text(min_size=1, max_size=8),
)
def test_any_checkpoint_survives_export_and_import(
    seq: int, hash_: str, at: datetime, kid: str
) -> None:
    cp = sign_checkpoint(seq, hash_, at, kid, KEY)
    back = Checkpoint.from_dict(json.loads(json.dumps(cp.as_dict())))
    assert back == cp
    assert verify_checkpoint_signature(back, {kid: KEY.public_key()})


# -- from_dict ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"v": True},
        {"seq": "5"},
        {"seq": 0},
        {"hash": "xyz"},
        {"at": "yesterday"},
        {"at": "2026-01-05T10:00:00"},
        {"at": 12},
        {"kid": None},
        {"signature": "!!"},
        {"signature": "AAAA"},
        {"extra": 1},
    ],
)
def test_from_dict_rejects_bad_shape(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        Checkpoint.from_dict({**sign().as_dict(), **change})


@pytest.mark.parametrize("missing", ["v", "seq", "hash", "at", "kid", "signature"])
def test_from_dict_rejects_missing_fields(missing: str) -> None:
    d = sign().as_dict()
    del d[missing]
    with pytest.raises(InvalidInput, match=missing):
        Checkpoint.from_dict(d)


def test_from_dict_rejects_non_objects() -> None:
    with pytest.raises(InvalidInput):
        Checkpoint.from_dict([1, 2])  # type: ignore[arg-type]


# -- against the chain --------------------------------------------------------------


def test_consistent_chain_passes() -> None:
    chain = chain_of(6)
    cp = sign(seq=4, hash_=chain[3].hash)
    assert check_against_chain(cp, chain[3].hash, head_seq=6) is None
    assert check_against_chain(cp, chain[3].hash, head_seq=4) is None


def test_truncated_chain_is_detected() -> None:
    chain = chain_of(6)
    cp = sign(seq=6, hash_=chain[5].hash)
    truncated = chain[:4]
    assert verify_events(truncated).ok  # the chain alone cannot tell...
    problem = check_against_chain(cp, None, head_seq=verify_events(truncated).head_seq)
    assert problem is not None  # ...the checkpoint can
    assert problem.startswith("chain ends at seq 4 but checkpoint at seq 6")
    assert "truncated" in problem


def test_rewritten_history_is_detected() -> None:
    # A forger edits event 2 and recomputes every hash after it: the chain verifies,
    # but the hash at the checkpoint's seq no longer matches what was signed.
    chain = chain_of(5)
    cp = sign(seq=4, hash_=chain[3].hash)
    forged: list[ChainedEvent] = []
    prev = GENESIS_HASH
    for e in chain:
        e2 = dataclasses.replace(e, prev_hash=prev, data={"i": -1} if e.seq == 2 else e.data)
        e2 = dataclasses.replace(e2, hash=recompute_hash(e2))
        forged.append(e2)
        prev = e2.hash
    assert verify_events(forged).ok
    problem = check_against_chain(cp, forged[3].hash, head_seq=5)
    assert problem == (
        "event 4: hash differs from checkpoint at seq 4 "
        "(signed 2026-01-05T10:00:00.000000Z by 'k1'): history was rewritten"
    )


def test_missing_event_at_checkpoint_is_detected() -> None:
    problem = check_against_chain(sign(seq=4), None, head_seq=9)
    assert problem is not None
    assert problem.startswith("event 4 is missing")
