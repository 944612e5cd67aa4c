"""Periodic jobs run in one process at a time: advisory locks on a real PostgreSQL.

Two "processes" are two engines, each with its own lock connection: one takes a job and
keeps it, the other does not run it until the holder's session ends (closed, or killed by
the server), then takes it over on its next tick.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from jitgate.storage.database import create_db_engine
from jitgate.storage.locks import (
    APPLICATION_NAME,
    AdvisoryJobLocks,
    NullJobLocks,
    exclusive,
    job_key,
    job_locks,
)

postgres = pytest.mark.postgres


@pytest.fixture
def engines(postgres_url: str) -> Iterator[tuple[Engine, Engine]]:
    first, second = create_db_engine(postgres_url), create_db_engine(postgres_url)
    yield first, second
    first.dispose()
    second.dispose()


@pytest.fixture
def pair(engines: tuple[Engine, Engine]) -> Iterator[tuple[AdvisoryJobLocks, AdvisoryJobLocks]]:
    a, b = AdvisoryJobLocks(engines[0]), AdvisoryJobLocks(engines[1])
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def job() -> str:
    """A job name of this test alone (the run's database is shared by the tests)."""
    return f"test-job-{secrets.token_hex(4)}"


def holder_pids(postgres_url: str, job: str) -> list[int]:
    """The server sessions holding ``job``'s lock, as pg_locks shows them."""
    key = job_key(job)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
            " AND l.classid::bigint = %s AND l.objid::bigint = %s"
            " AND a.application_name = %s",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF, APPLICATION_NAME),
        ).fetchall()
    return [int(row[0]) for row in rows]


def wait_until_released(postgres_url: str, job: str) -> None:
    """Until the server has ended the holder's session: a backend leaves a moment after
    its client hangs up or it is told to (real processes: a brief real-time wait)."""
    deadline = time.monotonic() + 10
    while holder_pids(postgres_url, job):
        assert time.monotonic() < deadline, f"{job}: the lock is still held"
        time.sleep(0.01)


def terminate(postgres_url: str, pid: int) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_job_keys_are_stable_and_distinct() -> None:
    # Pinned: processes of two versions side by side must compete for the same lock.
    assert job_key("expire-grants") == job_key("expire-grants")
    assert job_key("expire-grants") == 3302741403190950365
    names = ["expire-grants", "revoke-idle-grants", "expire-pending", "checkpoint",
             "notify-deliver", "notify-expiry-warnings"]  # fmt: skip
    keys = {job_key(name) for name in names}
    assert len(keys) == len(names)
    assert all(-(2**63) <= key < 2**63 for key in keys)


def test_sqlite_runs_every_job_here(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path}/jitgate.db")
    try:
        locks = job_locks(engine)
        assert isinstance(locks, NullJobLocks)
        runs: list[int] = []
        assert exclusive(locks, "expire-grants", lambda: runs.append(1))() is None
        assert runs == [1]
    finally:
        engine.dispose()


@postgres
def test_postgres_chooses_advisory_locks(engines: tuple[Engine, Engine]) -> None:
    locks = job_locks(engines[0])
    try:
        assert isinstance(locks, AdvisoryJobLocks)
    finally:
        locks.close()


@postgres
def test_one_process_runs_a_job_and_keeps_it(
    pair: tuple[AdvisoryJobLocks, AdvisoryJobLocks], job: str, postgres_url: str
) -> None:
    a, b = pair
    assert a.holds(job)
    for _ in range(5):  # sticky: the holder keeps it, the other never gets it
        assert a.holds(job)
        assert not b.holds(job)
    assert len(holder_pids(postgres_url, job)) == 1
    other = job + "-other"  # jobs are independent: the second process may run another
    assert b.holds(other)
    assert not a.holds(other)


@postgres
def test_exclusive_runs_the_job_only_where_the_lock_is_held(
    pair: tuple[AdvisoryJobLocks, AdvisoryJobLocks], job: str
) -> None:
    a, b = pair
    runs: list[str] = []
    in_a = exclusive(a, job, lambda: runs.append("a"))
    in_b = exclusive(b, job, lambda: runs.append("b"))
    for _ in range(3):
        in_a()
        in_b()
    assert runs == ["a", "a", "a"]


@postgres
def test_closing_the_holder_hands_the_job_over(
    pair: tuple[AdvisoryJobLocks, AdvisoryJobLocks], job: str, postgres_url: str
) -> None:
    a, b = pair
    assert a.holds(job)
    assert not b.holds(job)
    a.close()
    wait_until_released(postgres_url, job)
    assert b.holds(job)  # on its next tick
    assert not a.holds(job)  # closed for good: it never competes again
    assert len(holder_pids(postgres_url, job)) == 1


@postgres
def test_a_lost_connection_loses_the_lock_and_the_job_passes_over(
    pair: tuple[AdvisoryJobLocks, AdvisoryJobLocks],
    job: str,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    assert a.holds(job)
    [pid] = holder_pids(postgres_url, job)
    terminate(postgres_url, pid)  # as if the server had dropped the session
    wait_until_released(postgres_url, job)
    caplog.set_level(logging.INFO, "jitgate.storage.locks")
    assert not a.holds(job)  # never runs without the lock
    assert "the job lock connection failed" in caplog.text
    assert f"no longer runs the periodic job {job}" in caplog.text
    assert b.holds(job)
    assert not a.holds(job)  # connected again, but the job is b's now
    assert "the job lock connection is back" in caplog.text
    assert a.holds(job + "-other")  # and it competes for the jobs again


@postgres
def test_changes_are_logged_once(
    pair: tuple[AdvisoryJobLocks, AdvisoryJobLocks],
    job: str,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = pair
    caplog.set_level(logging.INFO, "jitgate.storage.locks")
    for _ in range(3):
        a.holds(job)
        b.holds(job)
    a.close()
    wait_until_released(postgres_url, job)
    for _ in range(3):
        b.holds(job)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"this process now runs the periodic job {job}",
        f"this process no longer runs the periodic job {job}: this process is stopping",
        f"this process now runs the periodic job {job}",
    ]


@postgres
def test_threads_of_two_processes_agree_on_one_runner(
    pair: tuple[AdvisoryJobLocks, AdvisoryJobLocks], job: str
) -> None:
    """The jobs tick in worker threads: many at once share one lock connection."""
    results: dict[str, list[bool]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def tick(name: str, locks: AdvisoryJobLocks) -> None:
        start.wait()
        try:
            for _ in range(20):
                results[name].append(locks.holds(job))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=tick, args=(name, locks))
        for name, locks in zip("abababab", pair * 4, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results["a"]) == len(results["b"]) == 80
    # One of them took the job on its first tick and kept it; the other never ran it.
    assert {all(results["a"]), all(results["b"])} == {True, False}
    assert not any(results["a"]) or not any(results["b"])


def test_an_unreachable_server_runs_nothing_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_db_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    locks = AdvisoryJobLocks(engine)
    caplog.set_level(logging.INFO, "jitgate.storage.locks")
    try:
        assert not locks.holds("expire-grants")
        assert not locks.holds("expire-grants")
    finally:
        locks.close()
        engine.dispose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "runs no periodic job until it connects again" in warnings[0].getMessage()
