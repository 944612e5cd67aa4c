"""Ed25519 signing keys for grant tokens, and the JWKS that publishes them.

The newest unretired key signs. A retired key stays published (and accepted) until
``keep_until``, the moment the last token it signed expires. Private keys are stored
encrypted under the master key, bound to their ``kid``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from jitgate.errors import InvalidInput
from jitgate.secrets import SecretBox
from jitgate.storage.directory_repo import StoredKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def public_keys_from_jwks(doc: Any) -> dict[str, Ed25519PublicKey]:
    """The Ed25519 keys of a JWKS document (as ``/.well-known/jwks.json`` serves it)."""
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise InvalidInput("not a JWKS document: no 'keys' list")
    found: dict[str, Ed25519PublicKey] = {}
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
            continue
        kid, x = key.get("kid"), key.get("x")
        if not isinstance(kid, str) or not isinstance(x, str):
            raise InvalidInput("a JWKS key lacks 'kid' or 'x'")
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            found[kid] = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise InvalidInput(f"JWKS key {kid!r} is not an Ed25519 public key") from exc
    return found


def _context(kid: str) -> str:
    return f"signing-key:{kid}"


def new_key(box: SecretBox, at: datetime) -> tuple[StoredKey, Ed25519PrivateKey]:
    private = Ed25519PrivateKey.generate()
    kid = "k" + secrets.token_hex(8)
    raw_private = private.private_bytes_raw()
    stored = StoredKey(
        kid=kid,
        private_ciphertext=box.encrypt(raw_private, _context(kid)),
        public_key=private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
        created_at=at,
        retired_at=None,
        keep_until=None,
    )
    return stored, private


@dataclass(frozen=True)
class KeyRing:
    """The signing key and every public key still in force."""

    signing_kid: str
    signing_key: Ed25519PrivateKey
    public_keys: Mapping[str, Ed25519PublicKey]

    @classmethod
    def from_stored(cls, keys: list[StoredKey], box: SecretBox, now: datetime) -> KeyRing | None:
        live = [k for k in keys if k.keep_until is None or k.keep_until > now]
        active = [k for k in live if k.retired_at is None]
        if not active:
            return None
        signer = max(active, key=lambda k: k.created_at)
        private = Ed25519PrivateKey.from_private_bytes(
            box.decrypt(signer.private_ciphertext, _context(signer.kid))
        )
        publics = {k.kid: Ed25519PublicKey.from_public_bytes(k.public_key) for k in live}
        return cls(signing_kid=signer.kid, signing_key=private, public_keys=publics)

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": kid,
                    "x": _b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
                }
                for kid, key in sorted(self.public_keys.items())
            ]
        }
