"""Revocation, expiry and the freshness of the gateway's view: all refuse on the next call."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from jitgate.audit.events import EventType
from jitgate.clock import FrozenClock
from jitgate.domain.lifecycle import end_grant
from jitgate.domain.models import GrantStatus
from jitgate.gateway.view import GatewayView
from jitgate.secrets import SecretBox
from jitgate.services import grants
from jitgate.storage.store import Store
from tests.conftest import RecordingFeed
from tests.gateway.conftest import MAX_STALENESS, Harness

pytestmark = pytest.mark.anyio

TARGET = "/demo/v1/items"


async def test_revocation_is_in_force_on_the_very_next_call(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/**"])
    assert (await gw.call("GET", TARGET, issued.token)).status == 200
    assert gw.enforcer.cache.get(issued.token) is not None  # verified and cached

    ended = grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident 42")
    assert ended.status.value == "revoked"

    reply = await gw.call("GET", TARGET, issued.token)
    event = gw.assert_denied(reply, 403, "grant-revoked", hits_before=1)
    assert event.grant == issued.grant.id
    assert event.principal == "alice"


async def test_a_released_grant_is_refused(gw: Harness) -> None:
    issued = gw.issue()
    ended = grants.revoke(gw.ctx, gw.alice, issued.grant.id, "")
    assert ended.status.value == "released"
    reply = await gw.call("GET", TARGET, issued.token)
    gw.assert_denied(reply, 403, "grant-revoked")


async def test_every_token_of_a_revoked_grant_is_refused(gw: Harness) -> None:
    issued = gw.issue()
    second = grants.issue_token(gw.ctx, gw.alice, issued.grant.id)
    assert second.token != issued.token
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident")
    for token in (issued.token, second.token):
        gw.assert_denied(await gw.call("GET", TARGET, token), 403, "grant-revoked")


async def test_kill_switch_refuses_one_principal_and_spares_others(gw: Harness) -> None:
    alice_demo, alice_echo = gw.issue(), gw.issue(api="echo")
    bob_demo = gw.issue(principal=gw.bob)
    ended = grants.kill_switch(gw.ctx, gw.root, principal="alice", api=None, reason="laptop lost")
    assert {g.id for g in ended} == {alice_demo.grant.id, alice_echo.grant.id}

    gw.assert_denied(await gw.call("GET", TARGET, alice_demo.token), 403, "grant-revoked")
    reply = await gw.call("GET", "/echo/v1/items", alice_echo.token)
    gw.assert_denied(reply, 403, "grant-revoked", api="echo")
    assert (await gw.call("GET", TARGET, bob_demo.token)).status == 200


async def test_a_revocation_made_elsewhere_is_in_force_after_resync(gw: Harness) -> None:
    """Another process revoked (this view was not told); the resync reads the database."""
    issued = gw.issue()
    assert (await gw.call("GET", TARGET, issued.token)).status == 200
    gw.ctx.feed = RecordingFeed()
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "revoked by another control plane")
    assert not gw.view.is_ended(issued.grant.id)

    gw.view.resync()

    assert gw.view.is_ended(issued.grant.id)
    gw.assert_denied(
        await gw.call("GET", TARGET, issued.token), 403, "grant-revoked", hits_before=1
    )


async def test_resyncs_read_only_recent_revocations_and_still_miss_none(gw: Harness) -> None:
    """After the first read, a resync reads grants ended since the last one (with an
    overlap for late commits and slower clocks), and drops those whose tokens expired."""
    early, late = gw.issue(), gw.issue()
    gw.view.resync()  # the view has read everything once
    gw.ctx.feed = RecordingFeed()  # revocations by another process: only the database knows
    with gw.store.transaction() as tx:  # ended 8 s ago, committed only now
        grant = tx.access.get_grant(late.grant.id, lock=True)
        assert grant is not None
        tx.access.save_grant_state(
            end_grant(grant, GrantStatus.REVOKED, gw.clock.now() - timedelta(seconds=8), "x", "r")
        )
    grants.revoke(gw.ctx, gw.root, early.grant.id, "elsewhere")
    gw.view.resync()
    assert gw.view.is_ended(early.grant.id)
    assert gw.view.is_ended(late.grant.id)  # inside the overlap
    gw.clock.advance(timedelta(minutes=11))  # both grants' tokens have expired by now
    gw.view.resync()  # the periodic drop of expired entries keeps the view bounded
    assert not gw.view.is_ended(early.grant.id)
    assert not gw.view.is_ended(late.grant.id)


async def test_resync_keeps_what_the_feed_announced(gw: Harness) -> None:
    issued = gw.issue()
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident")
    gw.clock.advance(1)
    gw.view.resync()
    gw.assert_denied(await gw.call("GET", TARGET, issued.token), 403, "grant-revoked")


# expiry ---------------------------------------------------------------------------------


async def test_token_is_refused_exactly_at_expiry(gw: Harness) -> None:
    issued = gw.issue(duration="10m")
    assert (await gw.call("GET", TARGET, issued.token)).status == 200  # cached from here on
    gw.clock.advance(timedelta(minutes=10) - timedelta(milliseconds=1))
    gw.view.resync()  # keep the view fresh: the refusal must be about time
    assert (await gw.call("GET", TARGET, issued.token)).status == 200
    gw.clock.advance(timedelta(milliseconds=1))
    assert gw.clock.now() == issued.expires_at
    reply = await gw.call("GET", TARGET, issued.token)
    event = gw.assert_denied(reply, 403, "token-expired", hits_before=2)
    assert event.grant == issued.grant.id


async def test_token_is_refused_after_expiry(gw: Harness) -> None:
    issued = gw.issue(duration="10m")
    gw.clock.advance(timedelta(hours=2))
    gw.view.resync()  # keep the view fresh: the refusal must be about time
    gw.assert_denied(await gw.call("GET", TARGET, issued.token), 403, "token-expired")


@pytest.mark.parametrize(("after_exp", "status"), [(4.999, 200), (5.0, 403), (60.0, 403)])
async def test_clock_skew_leeway_is_bounded(gw: Harness, after_exp: float, status: int) -> None:
    gw.enforcer.leeway = 5.0  # the largest skew allowance the spec permits
    issued = gw.issue(duration="10m")
    gw.clock.advance(timedelta(minutes=10).total_seconds() + after_exp)
    gw.view.resync()
    reply = await gw.call("GET", TARGET, issued.token)
    assert reply.status == status
    if status == 403:
        gw.assert_denied(reply, 403, "token-expired")


@pytest.mark.parametrize("told", [True, False], ids=["by-feed", "by-database"])
@pytest.mark.parametrize(
    ("after_exp", "code"), [(1.0, "grant-revoked"), (4.9, "grant-revoked"), (5.0, "token-expired")]
)
async def test_a_revoked_grant_stays_refused_through_the_leeway_window(
    gw: Harness, told: bool, after_exp: float, code: str
) -> None:
    """Past ``exp`` but inside the skew allowance, a revoked token must not come back."""
    gw.enforcer.leeway = 5.0
    issued = gw.issue(duration="10m")
    if not told:
        gw.ctx.feed = RecordingFeed()  # revoked by another process: only the database knows
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident")
    gw.clock.advance(timedelta(minutes=10).total_seconds() + after_exp)
    gw.view.resync()  # the periodic resync runs in that window
    gw.assert_denied(await gw.call("GET", TARGET, issued.token), 403, code)


async def test_grant_not_yet_valid_is_refused_until_it_starts(gw: Harness) -> None:
    starts = gw.clock.now() + timedelta(hours=1)
    issued = gw.issue(starts_at=starts)
    gw.assert_denied(await gw.call("GET", TARGET, issued.token), 403, "token-not-yet-valid")

    gw.clock.advance(timedelta(hours=1))
    gw.view.resync()
    assert (await gw.call("GET", TARGET, issued.token)).status == 200


# freshness ------------------------------------------------------------------------------


async def test_a_view_never_resynced_fails_closed(gw: Harness) -> None:
    issued = gw.issue()
    view = GatewayView(gw.store, gw.box, gw.clock, max_staleness=MAX_STALENESS)
    view.apis_changed()  # what the feed can tell it: APIs and keys, but no resync yet
    view.keys_changed()
    gw.enforcer.view = view
    gw.assert_denied(await gw.call("GET", TARGET, issued.token), 503, "revocation-view-stale")
    health = await gw.call("GET", "/healthz")
    assert (health.status, health.json()) == (503, {"status": "stale"})


async def test_a_view_past_max_staleness_fails_closed_until_resync(gw: Harness) -> None:
    issued = gw.issue()
    gw.clock.advance(MAX_STALENESS)
    assert (await gw.call("GET", TARGET, issued.token)).status == 200  # at the bound: fresh

    gw.clock.advance(0.001)
    reply = await gw.call("GET", TARGET, issued.token)
    gw.assert_denied(reply, 503, "revocation-view-stale", hits_before=1)
    assert (await gw.call("GET", "/healthz")).status == 503

    gw.view.resync()
    assert (await gw.call("GET", TARGET, issued.token)).status == 200
    assert (await gw.call("GET", "/healthz")).status == 200


async def test_a_failed_resync_does_not_refresh_the_view(
    gw: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = gw.issue()

    def database_down() -> None:
        raise ConnectionError("database unreachable")

    for method in ("transaction", "read"):  # however the view reads the database
        if hasattr(gw.store, method):
            monkeypatch.setattr(gw.store, method, database_down)
    gw.clock.advance(MAX_STALENESS + 1)
    with pytest.raises(ConnectionError):
        gw.view.resync()
    reply = await gw.call("GET", TARGET, issued.token)
    gw.assert_denied(reply, 503, "revocation-view-stale")


def _database_bytes(directory: Path) -> bytes:
    """The SQLite database file and its journal, as stored on disk."""
    return b"".join(p.read_bytes() for p in directory.glob("jitgate.db*"))


async def test_no_secret_in_the_audit_trail_or_the_database(gw: Harness, tmp_path: Path) -> None:
    issued = gw.issue(api="echo")
    assert (await gw.call("GET", "/echo/v1/leak", issued.token)).status == 302
    await gw.call("GET", "/echo/v1/items", "garbage")
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident")
    await gw.call("GET", "/echo/v1/items", issued.token)
    assert len(gw.events(EventType.ACCESS_ALLOWED)) == 1
    assert len(gw.events(EventType.ACCESS_DENIED)) == 2

    with gw.store.transaction() as tx:
        tx.audit.append(gw.sink.events)  # what the audit writer persists
    with gw.store.transaction() as tx:
        stored = list(tx.audit.stream())
    kinds = {e.type for e in stored}
    assert {EventType.API_CREATED, EventType.GRANT_REVOKED, EventType.ACCESS_DENIED} <= kinds
    dumped = repr(stored) + json.dumps([e.data for e in stored], default=str)
    database = _database_bytes(tmp_path)
    assert database
    for form in gw.secret_forms:
        assert form not in dumped
        assert form.encode() not in database


async def test_upstream_repr_never_shows_the_secret(gw: Harness) -> None:
    for name, upstream in gw.view.upstreams.items():
        shown = repr(upstream) + repr(gw.enforcer.decide("GET", f"/{name}/", {}, 0.0))
        assert gw.secrets[name] not in shown
        assert upstream.secret.reveal() == gw.secrets[name]


@pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_smoke_on_postgresql(gw: Harness) -> None:
    issued = gw.issue(["GET /v1/**"])
    reply = await gw.call("GET", "/demo/v1/items?x=1", issued.token)
    assert reply.status == 200
    assert reply.json()["query"] == "x=1"

    # Another replica's revocation, learnt from PostgreSQL by the resync.
    gw.ctx.feed = RecordingFeed()
    grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident")
    gw.view.resync()
    gw.assert_denied(
        await gw.call("GET", TARGET, issued.token), 403, "grant-revoked", hits_before=1
    )


def test_revocations_announced_during_resyncs_are_never_lost(
    store: Store, box: SecretBox, clock: FrozenClock
) -> None:
    view = GatewayView(store, box, clock, max_staleness=2.0)
    stop = threading.Event()
    failures: list[BaseException] = []

    def resync_forever() -> None:
        while not stop.is_set():
            try:
                view.resync()
            except BaseException as exc:
                failures.append(exc)

    worker = threading.Thread(target=resync_forever)
    worker.start()
    later = clock.now() + timedelta(hours=1)
    try:
        for i in range(1000):
            view.grant_ended(f"grt_{i}", later)
            assert view.is_ended(f"grt_{i}")  # in force when the announcement returns
    finally:
        stop.set()
        worker.join()
    assert failures == []
    assert all(view.is_ended(f"grt_{i}") for i in range(1000))
