"""Signing-key rotation as the gateway sees it: old tokens live out their grant, no longer."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest

from jitgate.services import keys
from tests.gateway.conftest import Harness

pytestmark = pytest.mark.anyio

TARGET = "/demo/v1/items"


async def test_tokens_signed_before_a_rotation_are_accepted_until_their_grant_ends(
    gw: Harness,
) -> None:
    old = gw.issue(duration="30m")
    old_kid = jwt.get_unverified_header(old.token)["kid"]

    ring = keys.rotate(gw.ctx, gw.root)  # announced on the feed: the view has both keys

    assert ring.signing_kid != old_kid
    assert set(gw.view.public_keys) == {old_kid, ring.signing_kid}
    new = gw.issue(duration="10m")
    assert jwt.get_unverified_header(new.token)["kid"] == ring.signing_kid
    assert (await gw.call("GET", TARGET, old.token)).status == 200
    assert (await gw.call("GET", TARGET, new.token)).status == 200

    # Past keep_until (the end of the last grant the old key could have signed for)
    # the resync drops the old key.
    gw.clock.advance(timedelta(minutes=30))
    gw.view.resync()
    assert set(gw.view.public_keys) == {ring.signing_kid}


async def test_a_cached_token_is_refused_once_its_key_is_withdrawn(gw: Harness) -> None:
    """Withdrawing a key (say, after it leaked) refuses even tokens already verified."""
    issued = gw.issue(duration="30m")
    kid = jwt.get_unverified_header(issued.token)["kid"]
    assert (await gw.call("GET", TARGET, issued.token)).status == 200
    assert gw.enforcer.cache.get(issued.token) is not None

    keys.rotate(gw.ctx, gw.root)
    with gw.store.transaction() as tx:  # withdraw the old key now, not at keep_until
        tx.directory.retire_key(kid, gw.clock.now(), gw.clock.now())
    gw.view.resync()
    assert kid not in gw.view.public_keys

    reply = await gw.call("GET", TARGET, issued.token)
    gw.assert_denied(reply, 401, "token-key", hits_before=1)
    assert gw.enforcer.cache.get(issued.token) is None
