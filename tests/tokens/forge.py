"""Hand-built compact JWS for tests that try to break grant-token verification.

PyJWT refuses to produce most of these (``alg: None``, HMAC over an asymmetric key,
embedded keys), so they are assembled byte by byte here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Signer = Callable[[bytes], bytes]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _part(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Signer | None) -> str:
    """``header.claims.signature``; an empty signature when ``sign`` is None."""
    signing_input = f"{_part(header)}.{_part(claims)}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def ed25519(key: Ed25519PrivateKey) -> Signer:
    return key.sign


def hs256_with_public_key(key: Ed25519PrivateKey) -> Signer:
    """The classic confusion attack: HMAC keyed with the server's public key bytes."""
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return lambda data: hmac.new(public, data, hashlib.sha256).digest()


def header(kid: str, **extra: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "jit+jwt", "kid": kid, **extra}


def decode_part(token: str, index: int) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(b64url_decode(token.split(".")[index]))
    return value


def replace_claims(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload (a tampered token)."""
    head, _, sig = token.split(".")
    claims = decode_part(token, 1) | changes
    return f"{head}.{_part(claims)}.{sig}"
