"""Envelope encryption of upstream secrets and signing keys (AES-256-GCM).

The master key is 32 random bytes: read from ``JITGATE_MASTER_KEY`` (base64url) or
from ``master_key_file``, which is created with mode 0600 on first start. Every
ciphertext is ``b"v1" + nonce(12) + AES-GCM(ciphertext || tag)`` and is bound to an
*associated data* string naming what it protects (``api:payments``,
``signing-key:abc``), so a ciphertext copied onto another row does not decrypt.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from jitgate.errors import ConfigError, JitgateError
from jitgate.secrets.secret import Secret

_VERSION = b"v1"
_NONCE = 12


class DecryptionFailed(JitgateError):  # noqa: N818 - names the failure
    code = "decryption-failed"


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: master key is not valid base64url") from exc
    if len(key) != 32:
        raise ConfigError(f"{source}: master key must be 32 bytes, got {len(key)}")
    return key


def load_master_key(env_value: Secret | None, path: Path) -> bytes:
    """The master key from the environment, else from ``path`` (created 0600 if absent)."""
    if env_value is not None and env_value.reveal():
        return _decode_key(env_value.reveal(), "JITGATE_MASTER_KEY")
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(
                f"{path}: master key file is readable by others (mode {mode:o}); chmod 600 it"
            )
        return _decode_key(path.read_text(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.urlsafe_b64encode(key).decode().rstrip("=") + "\n")
    return key


class SecretBox:
    """Encrypts and decrypts small values under the master key."""

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(master_key)

    def encrypt(self, plaintext: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def decrypt(self, blob: bytes, context: str) -> bytes:
        if blob[:2] != _VERSION or len(blob) < 2 + _NONCE + 16:
            raise DecryptionFailed(f"{context}: unknown ciphertext format")
        nonce, body = blob[2 : 2 + _NONCE], blob[2 + _NONCE :]
        try:
            return self._aead.decrypt(nonce, body, context.encode())
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"{context}: cannot decrypt (wrong master key or tampered value)"
            ) from exc

    def encrypt_secret(self, secret: Secret, context: str) -> bytes:
        return self.encrypt(secret.reveal().encode(), context)

    def decrypt_secret(self, blob: bytes, context: str) -> Secret:
        return Secret(self.decrypt(blob, context).decode())
