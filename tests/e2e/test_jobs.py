"""End to end: two ``jitgate serve control`` processes on one PostgreSQL database.

Each periodic job runs in one of them: the first to tick takes the job's advisory lock and
keeps it; the other competes every tick (its lock session is there) and runs nothing.
When the runner is killed, its session ends with it and the other process takes the job
over within a tick or two. What each process runs is read from its own log.
"""

from __future__ import annotations

import base64
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from tests.e2e.conftest import JITGATE, Server, postgres_database

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

RUNS = "this process now runs the periodic job expire-grants"
LOCK_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'jitgate job locks'"


@dataclass
class ControlServer(Server):
    """``jitgate serve control`` (no gateway) with a master key shared by its peers."""

    master_key: str = field(default_factory=str)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "JITGATE_MASTER_KEY": self.master_key}

    def command(self) -> list[str]:
        return [*JITGATE, "serve", "control"]

    def served(self) -> tuple[str, ...]:
        return (self.control_url,)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Real processes on real time: poll briefly until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    with postgres_database(postgres_url) as url:
        yield url


@pytest.fixture
def pair(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlServer, ControlServer]]:
    key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    root = tmp_path_factory.mktemp("jobs")
    first = ControlServer(root / "first", database, master_key=key)
    second = ControlServer(root / "second", database, master_key=key)
    try:
        first.start()  # one after the other: the first start creates the admin
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()


def test_one_control_process_runs_each_job_and_the_other_takes_over_when_it_dies(
    pair: tuple[ControlServer, ControlServer], database: str
) -> None:
    first, second = pair
    wait_for(lambda: RUNS in first.text(), "the first process to run expire-grants")

    def lock_sessions() -> int:
        with psycopg.connect(database, autocommit=True) as admin:
            row = admin.execute(LOCK_SESSIONS).fetchone()
        return int(row[0]) if row else 0

    wait_for(lambda: lock_sessions() == 2, "the second process to compete for the jobs")
    time.sleep(1.5)  # another tick of expire-grants in each process, at least
    assert first.text().count(RUNS) == 1
    assert RUNS not in second.text()

    assert first.process is not None
    first.process.send_signal(signal.SIGKILL)  # no goodbye: its session just ends
    first.stop()
    wait_for(lambda: RUNS in second.text(), "the second process to take expire-grants over")
    assert second.text().count(RUNS) == 1

    assert second.stop() == 0
    assert "no longer runs the periodic job expire-grants: this process is stopping" in (
        second.text()
    )
