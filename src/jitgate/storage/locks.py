"""Which process runs a periodic job: one at a time, through PostgreSQL advisory locks.

Every control-plane process (``jitgate up``, ``serve control``; several may share one
PostgreSQL) ticks the same periodic jobs. On PostgreSQL a tick runs its job only in the
process whose lock connection holds that job's advisory lock; elsewhere it does nothing.

What is guaranteed:

* At most one live session holds a job's lock (PostgreSQL's word on it). A process runs a
  job only after checking, on that tick, that its session holds the lock: never without it.
* The runner is sticky: a process that takes a job's lock keeps it while its session
  lives, so each job runs once per period across the deployment, from one place, and
  "now runs" / "no longer runs" is logged (info) once per change.
* Takeover: when the holder ends — stops, crashes, is killed — its session ends with it,
  PostgreSQL releases the lock, and another process takes the job on its next tick. A
  holder cut off from the server loses its session to the server's TCP keepalives (set
  short on this session), within about half a minute. (A process that hangs with its
  socket still open keeps its locks, and its jobs stall, until it is stopped.)
* A lost connection loses every lock with it: the process stops running its jobs, closes
  the connection, and connects again (and competes again for each job) on the next tick.
  Any error on the lock connection is treated so: the connection is closed for real, never
  kept or pooled, so no lock can stay held by a session this process considers lost.

Why session locks (``pg_try_advisory_lock``), not transaction locks
(``pg_try_advisory_xact_lock``): a transaction lock only keeps two runs from
*overlapping*; it is free again once a run ends, so N processes whose ticks fall at
different moments still run each job N times per period, taking turns. A session lock
picks one runner and keeps it, which is the point (no duplicated work, less contention).
Its price is one long-lived connection per process, kept outside the connection pool:
a pooled connection is only reset on return (a rollback), which leaves session locks held.
The locks need a real session: a direct connection, or PgBouncer in session mode (in
transaction mode the server session under this one would change from query to query).

A job may still overlap its successor briefly: the holder checks the lock when a run
starts, so if its connection drops mid-run another process can start before that run
ends. The jobs stay correct when that happens — they lock their rows and the outbox leases
its deliveries — the lock only spares the duplicated work.

Advisory locks belong to a database, so deployments in two databases of one server do not
compete. SQLite has no such lock and needs none: it serves one machine and one
control-plane process (``jitgate up``), where :class:`NullJobLocks` lets every job run.

The checks run in the jobs' worker threads; one mutex serialises this process's use of
its lock connection.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# A job's key is the first 8 bytes (big-endian, signed) of SHA-256 over this namespace and
# the job's name. Never change either: processes of two versions side by side (a rolling
# upgrade) must compete for the same lock, or the job would run in both.
KEY_NAMESPACE = b"jitgate.periodic-job\x00"
APPLICATION_NAME = "jitgate job locks"  # what pg_stat_activity shows for the lock session
# The server drops this session when its peer has gone silent: 10 s idle, then 3 probes
# 5 s apart (a dead process's socket closes at once; this is for a lost machine or network).
_KEEPALIVES = text(
    "SELECT set_config('tcp_keepalives_idle', '10', false),"
    " set_config('tcp_keepalives_interval', '5', false),"
    " set_config('tcp_keepalives_count', '3', false)"
)

_TRY = text("SELECT pg_try_advisory_lock(CAST(:key AS bigint))")
# A bigint advisory lock shows in pg_locks as classid (high 32 bits), objid (low 32 bits)
# and objsubid 1.
_HOLDS = text(
    "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_backend_pid() AND granted AND objsubid = 1"
    " AND classid::bigint = :high AND objid::bigint = :low)"
)


def job_key(name: str) -> int:
    """The advisory-lock key of the job ``name`` (a signed 64-bit integer, stable)."""
    digest = hashlib.sha256(KEY_NAMESPACE + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class JobLocks(Protocol):
    def holds(self, job: str) -> bool:
        """Whether this process runs ``job`` now (taking its lock if it is free)."""
        ...

    def close(self) -> None:
        """Give up every job (other processes take them on their next tick)."""
        ...


class NullJobLocks:
    """SQLite: one control-plane process, so every job runs here."""

    def holds(self, job: str) -> bool:
        del job
        return True

    def close(self) -> None:
        pass


class AdvisoryJobLocks:
    """PostgreSQL: session-level advisory locks on a connection of this process's own."""

    def __init__(self, engine: Engine) -> None:
        # Not the store's pool: closing this connection must end its session (releasing
        # the locks), where a pool would keep the session open, locks and all.
        self._engine = create_engine(
            engine.url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"application_name": APPLICATION_NAME, "connect_timeout": 5},
        )
        self._mutex = threading.Lock()
        self._connection: Connection | None = None
        self._held: set[str] = set()
        self._closed = False
        self._failing = False  # whether the last connection problem was logged already

    def holds(self, job: str) -> bool:
        key = job_key(job)
        with self._mutex:
            if self._closed:
                return False
            try:
                connection = self._connect()
                if job in self._held:
                    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
                    if connection.execute(_HOLDS, {"high": high, "low": low}).scalar_one():
                        return True
                    self._lose(job, "its lock is no longer held")
                if connection.execute(_TRY, {"key": key}).scalar_one():
                    self._held.add(job)
                    log.info("this process now runs the periodic job %s", job)
                    return True
                return False
            except SQLAlchemyError as exc:
                self._drop(exc)
                return False

    def close(self) -> None:
        with self._mutex:
            self._closed = True
            self._disconnect("this process is stopping")
            self._engine.dispose()

    def _connect(self) -> Connection:
        if self._connection is None:
            connection = self._engine.connect()
            try:
                connection.execute(_KEEPALIVES)
            except SQLAlchemyError:
                connection.close()
                raise
            self._connection = connection
            if self._failing:
                log.info("the job lock connection is back: competing for the periodic jobs")
                self._failing = False
        return self._connection

    def _drop(self, exc: SQLAlchemyError) -> None:
        """A failure on the lock connection: every lock goes with it."""
        if not self._failing:
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            log.warning(
                "the job lock connection failed (%s): this process runs no periodic job"
                " until it connects again",
                cause,
            )
            self._failing = True
        self._disconnect("its lock connection failed")

    def _disconnect(self, why: str) -> None:
        for job in sorted(self._held):
            self._lose(job, why)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.close()  # ends the session: the server releases its locks
            except SQLAlchemyError:
                log.debug("closing the job lock connection failed", exc_info=True)

    def _lose(self, job: str, why: str) -> None:
        self._held.discard(job)
        log.info("this process no longer runs the periodic job %s: %s", job, why)


def job_locks(engine: Engine) -> JobLocks:
    """Advisory locks on PostgreSQL; on SQLite (one process) none are needed."""
    if engine.dialect.name == "postgresql":
        return AdvisoryJobLocks(engine)
    return NullJobLocks()


def exclusive(locks: JobLocks, job: str, run: Callable[[], object]) -> Callable[[], object]:
    """``run``, made to do nothing on a tick where this process does not hold ``job``."""

    def guarded() -> object:
        return run() if locks.holds(job) else None

    return guarded
