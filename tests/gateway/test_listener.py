"""On PostgreSQL, a gateway in another process learns of a change through LISTEN/NOTIFY.

The services here announce nothing to the view (their feed only records): what reaches
it is the NOTIFY sent in the change's transaction, which wakes the view's resync at once
(the periodic one is an hour away in these tests). A rolled-back change sends nothing; a
listener whose connection is killed reconnects and resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import psycopg
import pytest

from jitgate.domain.lifecycle import end_grant
from jitgate.domain.models import GrantStatus
from jitgate.gateway.listener import APPLICATION_NAME, ChangeListener, keep_fresh
from jitgate.services import grants
from jitgate.storage import notify
from jitgate.storage.notify import Change, listen_conninfo
from tests.conftest import RecordingFeed
from tests.gateway.conftest import Harness

on_postgres = pytest.mark.parametrize("store", ["postgres"], indirect=True)

TARGET = "/demo/v1/items"
PROMPT = 0.1  # seconds from commit to the view's knowing
NEVER = 3600.0  # the periodic resync's period here: it never runs during a test


@dataclass
class Watched:
    """A listening gateway view whose every finished resync is reported on ``done``."""

    listener: ChangeListener
    done: asyncio.Queue[int] = field(default_factory=asyncio.Queue)  # connections at start

    async def next_resync(self, within: float = PROMPT) -> int:
        return await asyncio.wait_for(self.done.get(), within)


@contextlib.asynccontextmanager
async def watching(gw: Harness, postgres_url: str) -> AsyncIterator[Watched]:
    conninfo = listen_conninfo(postgres_url)
    assert conninfo is not None
    loop = asyncio.get_running_loop()
    watched = Watched(ChangeListener(conninfo))

    def resync() -> None:
        started_with = watched.listener.connections
        gw.view.resync()
        loop.call_soon_threadsafe(watched.done.put_nowait, started_with)

    gw.ctx.feed = RecordingFeed()  # the in-process announcement must not be what works
    task = asyncio.create_task(keep_fresh(resync, NEVER, watched.listener))
    try:
        await asyncio.wait_for(watched.listener.listening.wait(), 10)
        await watched.next_resync(5)  # the one every (re)connection asks for
        yield watched
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.anyio
@pytest.mark.postgres
@on_postgres
async def test_a_committed_revocation_reaches_a_listening_gateway_at_once(
    gw: Harness, postgres_url: str
) -> None:
    issued = gw.issue()
    async with watching(gw, postgres_url) as watched:
        assert (await gw.call("GET", TARGET, issued.token)).status == 200
        loop = asyncio.get_running_loop()
        grants.revoke(gw.ctx, gw.root, issued.grant.id, "incident")
        committed = loop.time()
        await watched.next_resync()
        assert gw.view.is_ended(issued.grant.id)
        assert loop.time() - committed < PROMPT
        reply = await gw.call("GET", TARGET, issued.token)
        gw.assert_denied(reply, 403, "grant-revoked", hits_before=1)


@pytest.mark.anyio
@pytest.mark.postgres
@on_postgres
async def test_a_rolled_back_revocation_sends_nothing(gw: Harness, postgres_url: str) -> None:
    kept, fence = gw.issue(), gw.issue()
    async with watching(gw, postgres_url) as watched:
        with contextlib.suppress(RuntimeError), gw.store.transaction() as tx:
            ended = end_grant(kept.grant, GrantStatus.REVOKED, gw.clock.now(), "root", "x")
            tx.access.save_grant_state(ended)
            raise RuntimeError("roll back")
        # Notices arrive in commit order: once the fence's is handled, the other's
        # would have been too.
        grants.revoke(gw.ctx, gw.root, fence.grant.id, "fence")
        await watched.next_resync()
        with contextlib.suppress(TimeoutError):
            await watched.next_resync(0.2)
            pytest.fail("a second resync: something else was announced")
        assert gw.view.is_ended(fence.grant.id)
        assert not gw.view.is_ended(kept.grant.id)
        assert (await gw.call("GET", TARGET, kept.token)).status == 200


@pytest.mark.anyio
@pytest.mark.postgres
@on_postgres
async def test_a_dropped_listener_reconnects_and_resyncs(gw: Harness, postgres_url: str) -> None:
    during, after = gw.issue(), gw.issue()
    async with watching(gw, postgres_url) as watched:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (APPLICATION_NAME,),
            ).fetchall()
        assert killed == [(True,)]
        # Revoked while nobody listens (the loop is busy here): its notice is lost, and the
        # resync that follows the reconnection finds it.
        grants.revoke(gw.ctx, gw.root, during.grant.id, "while disconnected")
        while await watched.next_resync(10) < 2:
            pass
        assert watched.listener.connections == 2
        assert gw.view.is_ended(during.grant.id)
        gw.assert_denied(await gw.call("GET", TARGET, during.token), 403, "grant-revoked")

        grants.revoke(gw.ctx, gw.root, after.grant.id, "listening again")
        await watched.next_resync()
        assert gw.view.is_ended(after.grant.id)


def test_notices_are_parsed_strictly() -> None:
    assert notify.parse("grant_ended grt_0123456789abcdef 1700000000") == notify.Notice(
        Change.GRANT_ENDED, "grt_0123456789abcdef", 1700000000
    )
    assert notify.parse("apis_changed") == notify.Notice(Change.APIS_CHANGED)
    assert notify.parse("keys_changed") == notify.Notice(Change.KEYS_CHANGED)
    for bad in [
        "",
        "grant_ended",
        "grant_ended grt_x",
        "grant_ended grt_x -1",
        "grant_ended GRT;drop 1",
        "grant_ended grt_x 1 extra",
        "apis_changed now",
        "grant_ended grt_é 1",
        "grant_ended grt_x " + "9" * 200,
        "something_else",
    ]:
        assert notify.parse(bad) is None, bad


def test_only_postgresql_is_listened_to() -> None:
    assert listen_conninfo("sqlite:///x.db") is None
    conninfo = listen_conninfo("postgresql+psycopg://u:p@h:5433/db?sslmode=require")
    assert conninfo == "postgresql://u:p@h:5433/db?sslmode=require"
