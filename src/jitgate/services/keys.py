"""Signing-key rotation.

A new key signs from now on. The old one is retired but stays published (and accepted by
gateways) until ``keep_until``: the latest ``expires_at`` of any grant still active, which
bounds the ``exp`` of every token it can have signed.
"""

from __future__ import annotations

from jitgate.audit.events import EventType, NewEvent
from jitgate.domain.models import GrantStatus, Principal
from jitgate.errors import ConfigError
from jitgate.services.context import Context, require_admin
from jitgate.tokens.keys import KeyRing, new_key


def rotate(ctx: Context, actor: Principal) -> KeyRing:
    require_admin(actor.is_admin, "rotate signing keys")
    now = ctx.now()
    with ctx.store.transaction() as tx:
        live = tx.access.list_grants(status=GrantStatus.ACTIVE, limit=None)
        keep_until = max([now, *(g.expires_at for g in live)])
        old = ctx.keyring.signing_kid
        stored, _ = new_key(ctx.box, now)
        tx.directory.insert_key(stored)
        tx.directory.retire_key(old, now, keep_until)
        tx.audit.append(
            [
                NewEvent(
                    type=EventType.SIGNING_KEY_CREATED,
                    at=now,
                    actor=actor.id,
                    data={
                        "kid": stored.kid,
                        "alg": "EdDSA",
                        "retired": old,
                        "retired_kept_until": keep_until.isoformat(),
                    },
                )
            ]
        )
        ring = KeyRing.from_stored(tx.directory.list_keys(), ctx.box, now)
    if ring is None:  # pragma: no cover - we just inserted an active key
        raise ConfigError("no signing key after rotation")
    ctx.replace_keyring(ring)
    ctx.feed.keys_changed()
    return ring
