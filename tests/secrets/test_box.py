"""Envelope encryption, the master key file and the Secret type."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest

from jitgate.errors import ConfigError
from jitgate.secrets import Secret, SecretBox, load_master_key
from jitgate.secrets.box import DecryptionFailed


def test_secret_never_prints() -> None:
    s = Secret("sk_live_123")
    for shown in (repr(s), str(s), f"{s}", f"{s!r}", f"{s:>20}", str([s]), str({"k": s})):
        assert "sk_live_123" not in shown
    assert s.reveal() == "sk_live_123"
    assert s == Secret("sk_live_123")
    assert s != Secret("other")


def test_round_trip_and_context_binding() -> None:
    box = SecretBox(secrets.token_bytes(32))
    blob = box.encrypt_secret(Secret("sk_1"), "api:payments")
    assert b"sk_1" not in blob
    assert box.decrypt_secret(blob, "api:payments").reveal() == "sk_1"
    with pytest.raises(DecryptionFailed):
        box.decrypt_secret(blob, "api:billing")  # copied onto another row: refused


def test_each_encryption_uses_a_fresh_nonce() -> None:
    box = SecretBox(secrets.token_bytes(32))
    assert box.encrypt(b"x", "c") != box.encrypt(b"x", "c")


@pytest.mark.parametrize("mutate", ["flip", "truncate", "version"])
def test_tampered_ciphertext_is_refused(mutate: str) -> None:
    box = SecretBox(secrets.token_bytes(32))
    blob = bytearray(box.encrypt(b"payload", "c"))
    if mutate == "flip":
        blob[-1] ^= 1
    elif mutate == "truncate":
        blob = blob[:20]
    else:
        blob[0:2] = b"v9"
    with pytest.raises(DecryptionFailed):
        box.decrypt(bytes(blob), "c")


def test_wrong_master_key_is_refused() -> None:
    blob = SecretBox(secrets.token_bytes(32)).encrypt(b"x", "c")
    with pytest.raises(DecryptionFailed):
        SecretBox(secrets.token_bytes(32)).decrypt(blob, "c")


def test_master_key_file_created_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "master.key"
    first = load_master_key(None, path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(None, path) == first


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_master_key(None, path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_master_key(None, path)


def test_master_key_from_environment_wins(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    text = base64.urlsafe_b64encode(key).decode().rstrip("=")
    assert load_master_key(Secret(text), tmp_path / "unused.key") == key
    assert not (tmp_path / "unused.key").exists()


@pytest.mark.parametrize("text", ["!!!", base64.urlsafe_b64encode(b"short").decode()])
def test_bad_master_key_is_a_clear_config_error(text: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JITGATE_MASTER_KEY"):
        load_master_key(Secret(text), tmp_path / "k")
