"""Keeping the gateway's view fresh: a periodic resync, woken early by PostgreSQL NOTIFY.

On PostgreSQL a change that enforcement depends on (a grant ended early, APIs or
signing keys changed) is announced by ``pg_notify`` in the transaction that makes it
(:mod:`jitgate.storage.notify`). :class:`ChangeListener` holds one dedicated connection
per gateway process, in autocommit, ``LISTEN``-ing on that channel. Guarantees:

* A valid notice wakes :func:`keep_fresh`, which runs the view's ordinary (incremental,
  tested) resync at once: the notice is only a hint to look, its payload is validated
  and never applied as such. Bursts coalesce: one resync runs at a time, and one more
  follows if anything arrived while it ran (the notice may postdate its read).
* On a lost connection the listener reconnects with capped exponential back-off, and
  wakes a resync each time it is listening again: notices sent meanwhile are lost. The
  connection is pinged every :data:`PING_EVERY` seconds (and has TCP keepalives), so a
  dead one is noticed and replaced.
* The periodic resync stays the safety net, and the freshness bound stays the view's
  (:attr:`GatewayView.fresh`): if resyncs stop, the gateway fails closed; the listener
  never makes the view look fresher than its last successful resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from jitgate.storage.notify import CHANNEL, parse

log = logging.getLogger(__name__)

APPLICATION_NAME = "jitgate-listener"  # how the connection shows in pg_stat_activity
BACKOFF_FIRST = 0.05  # seconds before the first reconnection attempt
BACKOFF_MAX = 2.0  # and at most this long between attempts
PING_EVERY = 5.0  # seconds without a notice before checking the connection is alive
PING_TIMEOUT = 2.0  # seconds for that check (and for connecting)


class ChangeListener:
    """``LISTEN`` on the change channel and call ``wake`` on every valid notice, and
    once each time it is (re)connected; see the module docstring."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.listening = asyncio.Event()  # set while LISTEN is in effect
        self.connections = 0  # how many times it has started listening

    async def run(self, wake: Callable[[], None]) -> None:
        """Listen until cancelled, reconnecting with back-off."""
        delay = BACKOFF_FIRST
        while True:
            before = self.connections
            try:
                await self._listen(wake)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("change listener: connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
            if self.connections != before:  # it was listening: a fresh outage
                delay = BACKOFF_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _listen(self, wake: Callable[[], None]) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            application_name=APPLICATION_NAME,
            connect_timeout=max(int(PING_TIMEOUT), 1),
            # The kernel gives up on a silent peer in about 10 s even between pings.
            keepalives=1,
            keepalives_idle=4,
            keepalives_interval=2,
            keepalives_count=3,
        )
        async with conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.connections += 1
            self.listening.set()
            wake()  # what was announced while not listening is lost: resync
            while True:
                async for notice in conn.notifies(timeout=PING_EVERY):
                    if notice.channel == CHANNEL and parse(notice.payload) is not None:
                        wake()
                    else:
                        log.warning("change listener: ignored a malformed notice")
                # Every PING_EVERY seconds: is the connection still there? (Notices
                # arriving meanwhile are kept by psycopg for the next notifies().)
                await asyncio.wait_for(conn.execute("SELECT 1"), PING_TIMEOUT)


async def keep_fresh(
    resync: Callable[[], object], period: float, listener: ChangeListener | None = None
) -> None:
    """Run ``resync`` every ``period`` seconds, and at once when ``listener`` wakes it;
    until cancelled (which also stops the listener)."""
    wake = asyncio.Event()
    task = None
    if listener is not None:
        task = asyncio.create_task(listener.run(wake.set))
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), period)
            wake.clear()  # before reading: a notice from now on asks for another resync
            try:
                await asyncio.to_thread(resync)
            except Exception:
                log.exception("resync failed")
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
