"""Signing-key rotation: new tokens use the new key, old tokens stay valid until they expire."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from jitgate.clock import FrozenClock
from jitgate.demo.fixture import set_up_demo
from jitgate.errors import Forbidden
from jitgate.services import access, audit, directory, grants, keys
from jitgate.services.context import Context
from jitgate.tokens.grant_token import GrantClaims, verify_signature
from jitgate.tokens.keys import KeyRing


def test_rotation_keeps_old_tokens_valid_until_their_grants_end(
    ctx: Context, clock: FrozenClock, tmp_path: Path
) -> None:
    set_up_demo(ctx, tmp_path, "http://127.0.0.1:9")
    alice = directory.get_principal(ctx, "alice")
    admin = directory.get_principal(ctx, "admin")
    view = access.create_request(
        ctx, alice, api="demo", scopes=["GET /**"], duration="10m", reason="before rotation"
    )
    assert view.grant is not None
    old_token = grants.issue_token(ctx, alice, view.grant.id).token
    old_kid = ctx.keyring.signing_kid

    ring = keys.rotate(ctx, admin)
    assert ring.signing_kid != old_kid
    assert {old_kid, ring.signing_kid} <= set(ring.public_keys)
    assert ctx.feed.key_changes == 1  # type: ignore[attr-defined]
    new_token = grants.issue_token(ctx, alice, view.grant.id).token
    for token in (old_token, new_token):
        assert isinstance(verify_signature(token, ring.public_keys, ctx.issuer), GrantClaims)

    # Once the last grant the old key could have signed for has ended, it is gone.
    clock.advance(timedelta(minutes=11))
    with ctx.store.transaction() as tx:
        later = KeyRing.from_stored(tx.directory.list_keys(), ctx.box, clock.now())
    assert later is not None
    assert old_kid not in later.public_keys
    assert later.signing_kid == ring.signing_kid


def test_only_admins_rotate(ctx: Context, tmp_path: Path) -> None:
    set_up_demo(ctx, tmp_path, "http://127.0.0.1:9")
    with pytest.raises(Forbidden):
        keys.rotate(ctx, directory.get_principal(ctx, "bob"))


def test_checkpoints_signed_before_a_rotation_still_verify(
    ctx: Context, clock: FrozenClock, tmp_path: Path
) -> None:
    set_up_demo(ctx, tmp_path, "http://127.0.0.1:9")
    admin = directory.get_principal(ctx, "admin")
    assert audit.checkpoint(ctx) is not None
    keys.rotate(ctx, admin)  # no active grant: the old key leaves the JWKS at once
    clock.advance(timedelta(minutes=1))
    result = audit.verify(ctx, admin)
    assert result.ok, result.as_dict()
    assert result.checkpoint is not None
