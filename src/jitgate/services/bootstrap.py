"""First-start work: the signing key ring and the administrator."""

from __future__ import annotations

import os
from pathlib import Path

from jitgate.audit.events import EventType, NewEvent
from jitgate.clock import Clock
from jitgate.errors import ConfigError
from jitgate.secrets import SecretBox
from jitgate.services import directory
from jitgate.services.context import Context
from jitgate.storage.store import Store
from jitgate.tokens.keys import KeyRing, new_key

ADMIN_ID = "admin"


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (replacing it atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def ensure_keyring(store: Store, box: SecretBox, clock: Clock) -> KeyRing:
    """The signing key ring, creating the first key when there is none."""
    now = clock.now()
    with store.transaction() as tx:
        ring = KeyRing.from_stored(tx.directory.list_keys(), box, now)
        if ring is not None:
            return ring
        stored, _ = new_key(box, now)
        tx.directory.insert_key(stored)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.SIGNING_KEY_CREATED,
                    at=now,
                    actor="system",
                    data={"kid": stored.kid, "alg": "EdDSA"},
                )
            ]
        )
        ring = KeyRing.from_stored(tx.directory.list_keys(), box, now)
    if ring is None:  # pragma: no cover - we just created the key
        raise ConfigError("could not create a signing key")
    return ring


def ensure_admin(ctx: Context, state_dir: Path) -> str | None:
    """Create the ``admin`` principal on first start; its token goes to ``admin-token``."""
    if any(p.is_admin for p in directory.list_principals(ctx)):
        return None
    directory.create_principal(ctx, None, ADMIN_ID, display_name="Administrator", is_admin=True)
    token = directory.issue_principal_token(ctx, None, ADMIN_ID, label="bootstrap")
    write_private_file(state_dir / "admin-token", token + "\n")
    return token
