"""Signed checkpoints: an Ed25519 signature over the chain's head at a moment.

A checkpoint exported and kept elsewhere pins history: someone who can rewrite the
database (and recompute every hash) still cannot produce the signed hash at ``seq``, and
cannot drop events up to ``seq`` without the chain coming up short.

Guarantees:

* The signature covers ``canonical_json({"v": 1, "seq", "hash", "at", "kid"})``. That
  payload layout is a wire format: append-only, never reordered in meaning.
* :meth:`Checkpoint.as_dict` is that payload plus ``"signature"`` (unpadded base64url),
  so anyone can check an exported checkpoint with the public key alone.
* Checking the signature (:func:`verify_checkpoint_signature`) and checking the chain
  against it (:func:`check_against_chain`) are separate steps; do both.

Pure: keys and time are passed in; nothing here reads the clock or the database.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from jitgate.audit.chain import HASH_PATTERN, canonical_json
from jitgate.audit.events import format_at
from jitgate.errors import InvalidInput

CHECKPOINT_VERSION = 1

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_SIGNATURE_BYTES = 64
_FIELDS = frozenset({"v", "seq", "hash", "at", "kid", "signature"})


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "event ``seq`` of the audit chain has hash ``hash``"."""

    seq: int
    hash: str
    at: datetime
    key_id: str
    signature: str  # unpadded base64url of the 64-byte Ed25519 signature

    def as_dict(self) -> dict[str, Any]:
        return {**_payload(self.seq, self.hash, self.at, self.key_id), "signature": self.signature}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        """Read an exported checkpoint; :class:`InvalidInput` names what is wrong with it."""
        if not isinstance(d, Mapping):
            raise InvalidInput("checkpoint must be a JSON object")
        if set(d) != _FIELDS:
            missing, extra = sorted(_FIELDS - set(d)), sorted(set(d) - _FIELDS)
            raise InvalidInput(f"checkpoint fields: missing {missing}, unexpected {extra}")
        if d["v"] != CHECKPOINT_VERSION or isinstance(d["v"], bool):
            raise InvalidInput(f"checkpoint version {d['v']!r} is not supported")
        at = d["at"]
        if not isinstance(at, str):
            raise InvalidInput("checkpoint 'at' must be an ISO 8601 string")
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError:
            raise InvalidInput(f"checkpoint 'at' {at!r} is not an ISO 8601 time") from None
        signature = d["signature"]
        if not isinstance(signature, str) or _decode_signature(signature) is None:
            raise InvalidInput("checkpoint 'signature' is not a base64url Ed25519 signature")
        _check_fields(d["seq"], d["hash"], parsed, d["kid"])
        return cls(seq=d["seq"], hash=d["hash"], at=parsed, key_id=d["kid"], signature=signature)


def _check_fields(seq: Any, hash: Any, at: datetime, key_id: Any) -> None:
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise InvalidInput(f"checkpoint seq must be a positive integer, not {seq!r}")
    if not isinstance(hash, str) or not HASH_PATTERN.fullmatch(hash):
        raise InvalidInput("checkpoint hash must be 64 lower-case hex digits")
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput("checkpoint time has no timezone")
    if not isinstance(key_id, str) or not key_id:
        raise InvalidInput("checkpoint key id must be a non-empty string")


def _payload(seq: int, hash: str, at: datetime, key_id: str) -> dict[str, Any]:
    return {"v": CHECKPOINT_VERSION, "seq": seq, "hash": hash, "at": format_at(at), "kid": key_id}


def _decode_signature(text: str) -> bytes | None:
    """The signature bytes, or ``None`` unless ``text`` is their one canonical encoding."""
    if not _B64URL.fullmatch(text):
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _SIGNATURE_BYTES or _encode(raw) != text:
        return None
    return raw


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_checkpoint(
    seq: int,
    hash: str,
    at: datetime,
    key_id: str,
    private_key: Ed25519PrivateKey,
) -> Checkpoint:
    """Sign "event ``seq`` has hash ``hash``" at time ``at`` with key ``key_id``."""
    _check_fields(seq, hash, at, key_id)
    signature = private_key.sign(canonical_json(_payload(seq, hash, at, key_id)))
    return Checkpoint(seq=seq, hash=hash, at=at, key_id=key_id, signature=_encode(signature))


def verify_checkpoint_signature(
    cp: Checkpoint, public_keys: Mapping[str, Ed25519PublicKey]
) -> bool:
    """``True`` only if ``cp`` is well formed and signed by the key named ``cp.key_id``."""
    key = public_keys.get(cp.key_id)
    signature = _decode_signature(cp.signature)
    if key is None or signature is None:
        return False
    try:
        _check_fields(cp.seq, cp.hash, cp.at, cp.key_id)
        key.verify(signature, canonical_json(_payload(cp.seq, cp.hash, cp.at, cp.key_id)))
    except (InvalidInput, InvalidSignature):
        return False
    return True


def check_against_chain(cp: Checkpoint, event_hash_at_seq: str | None, head_seq: int) -> str | None:
    """``None`` if the chain agrees with ``cp``; otherwise what is wrong.

    ``event_hash_at_seq`` is the stored hash of event ``cp.seq`` (``None`` if there is no
    such row) and ``head_seq`` the chain's last seq. Check the signature first.
    """
    signed = f"checkpoint at seq {cp.seq} (signed {format_at(cp.at)} by {cp.key_id!r})"
    if head_seq < cp.seq:
        return (
            f"chain ends at seq {head_seq} but {signed} covers more: "
            "events were deleted from the end (truncated)"
        )
    if event_hash_at_seq is None:
        return f"event {cp.seq} is missing but {signed} covers it"
    if event_hash_at_seq != cp.hash:
        return f"event {cp.seq}: hash differs from {signed}: history was rewritten"
    return None
