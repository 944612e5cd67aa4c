"""How many gateway workers run, from the command line and the configuration, a worker
that cannot start, and the back-off on a worker that keeps dying soon after it serves (a
pool of real worker processes, killed from the test as soon as they say they serve; the
pool's clock is frozen where a test needs a worker to have served long). (Workers
serving, revocation across them, replacement and dying with the main process:
tests/e2e/test_workers.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitgate import runner
from jitgate.clock import FrozenClock
from jitgate.config import Settings, load_settings
from jitgate.runner import gateway_workers
from jitgate.secrets import load_master_key
from jitgate.workers import CRASH_BACKOFF, Backoff, WorkerFailed, WorkerPool, _Slot
from tests.cli.conftest import one_line_error, run
from tests.processes import spawned_children


def test_up_runs_one_gateway_process_and_serve_gateway_one_per_cpu(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    assert gateway_workers(settings, None, control=True) == 1
    assert gateway_workers(settings, None, control=False) == os.cpu_count()
    configured = load_settings(state_dir=tmp_path, gateway={"workers": 3})
    assert gateway_workers(configured, None, control=True) == 3
    assert gateway_workers(configured, None, control=False) == 3
    assert gateway_workers(configured, 2, control=True) == 2  # --workers wins


@pytest.mark.parametrize(
    ("args", "env", "workers", "control"),
    [
        (["up"], {}, None, True),
        (["up", "--workers", "2"], {}, 2, True),
        (["serve", "gateway", "--workers", "3"], {}, 3, False),
        (["serve", "gateway"], {"JITGATE_GATEWAY__WORKERS": "4"}, None, False),
    ],
)
def test_the_workers_reach_the_runner(
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    workers: int | None,
    control: bool,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "run", lambda settings, **kw: calls.append({"s": settings, **kw}))
    result = run(*args, env=env)
    assert result.exit_code == 0, result.stderr
    [call] = calls
    assert call["workers"] == workers
    assert call.get("control", True) is control
    assert call["s"].gateway.workers == (int(env["JITGATE_GATEWAY__WORKERS"]) if env else None)


@pytest.mark.parametrize("args", [["up", "--workers", "0"], ["serve", "gateway", "--workers", "x"]])
def test_a_bad_worker_count_is_refused(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    monkeypatch.setattr(runner, "run", lambda settings, **_: pytest.fail("started"))
    assert run(*args).exit_code == 2


def test_a_bad_configured_worker_count_is_one_clear_line() -> None:
    result = run("up", env={"JITGATE_GATEWAY__WORKERS": "0"})
    assert result.exit_code == 2
    assert "gateway.workers" in one_line_error(result)


def test_a_worker_that_cannot_start_fails_loudly_and_leaves_none_running(tmp_path: Path) -> None:
    # An empty database (never migrated): the worker's first resync fails, so it exits.
    settings = load_settings(state_dir=tmp_path, database_url=f"sqlite:///{tmp_path}/empty.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])

    async def start() -> None:
        pool = WorkerPool(settings, ("127.0.0.1", port), None, 2)
        with pytest.raises(WorkerFailed, match=r"exited with code 1 before it was serving"):
            await pool.start()

    asyncio.run(start())
    assert spawned_children(os.getpid()) == set()


# ------------------------------------------------------------ a worker in a crash loop


def test_the_back_off_doubles_up_to_its_cap() -> None:
    assert [CRASH_BACKOFF.delay(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]
    assert CRASH_BACKOFF.delay(100_000) == 30  # a loop of days does not overflow
    assert (CRASH_BACKOFF.quick, CRASH_BACKOFF.give_up) == (30, 5)


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings a worker can start with: a migrated database, a master key."""
    db = tmp_path / "jitgate.db"
    shutil.copyfile(request.getfixturevalue("_migrated_sqlite"), db)
    db.chmod(0o600)
    configured = load_settings(state_dir=tmp_path, database_url=f"sqlite:///{db}")
    load_master_key(None, configured.master_key_path)  # as the main process does
    return configured


WAIT = 20  # seconds for a worker to serve, or a line to be logged


class Pool:
    """A pool of two real workers on a free port, and its log (the test's log capture)."""

    def __init__(self, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="jitgate.workers")
        self._settings = settings
        self._caplog = caplog
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    @asynccontextmanager
    async def running(
        self, backoff: Backoff, clock: FrozenClock | None = None
    ) -> AsyncIterator[WorkerPool]:
        address = ("127.0.0.1", self.port)
        pool = WorkerPool(self._settings, address, None, 2, backoff=backoff, clock=clock)
        await pool.start()
        try:
            yield pool
        finally:
            await pool.stop()
            assert spawned_children(os.getpid()) == set()

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self._caplog.records if r.name == "jitgate.workers"]

    def serving(self, slot: int) -> list[object]:
        """The pids that said they serve in ``slot``, oldest first."""
        return [
            r.args[1]
            for r in self._caplog.records
            if r.name == "jitgate.workers"
            and r.msg == "gateway worker %d is serving (pid %d)"
            and isinstance(r.args, tuple)
            and r.args[0] == slot
        ]

    async def serves(self, slot: int, nth: int) -> int:
        """The pid of the ``nth`` (from 0) worker of ``slot``, once it serves."""
        deadline = time.monotonic() + WAIT
        while len(self.serving(slot)) <= nth:
            assert time.monotonic() < deadline, self.messages()
            await asyncio.sleep(0.01)
        pid = self.serving(slot)[nth]
        assert isinstance(pid, int)
        return pid

    async def logged(self, part: str) -> str:
        deadline = time.monotonic() + WAIT
        while not (found := [m for m in self.messages() if part in m]):
            assert time.monotonic() < deadline, self.messages()
            await asyncio.sleep(0.01)
        return found[-1]

    async def health(self) -> int:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(f"http://127.0.0.1:{self.port}/healthz")).status_code


def test_a_worker_that_keeps_dying_soon_after_it_serves_is_replaced_later_each_time(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool(settings, caplog)

    async def scenario() -> None:
        async with pool.running(Backoff(quick=30, first=0.25, cap=0.5, give_up=2)) as workers:
            [other] = pool.serving(1)
            for n, delay in enumerate([0.25, 0.5, 0.5]):
                pid = await pool.serves(0, n)
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
                said = await pool.logged(f"(pid {pid}) exited with code -9; starting another")
                assert f"starting another in {delay:g} s" in said
                assert f"{n + 1} in a row served under 30 s" in said
                # While slot 0 has no worker, the other one serves every connection.
                assert await asyncio.gather(*(pool.health() for _ in range(8))) == [200] * 8
                await pool.serves(0, n + 1)
                assert time.monotonic() - killed >= delay, n
            assert pool.serving(1) == [other], "the other slot's worker served on throughout"
            assert not workers.failed.done(), "one slot in a loop: the pool keeps retrying"

    asyncio.run(scenario())


def test_a_worker_that_served_long_enough_is_replaced_at_once_and_clears_the_back_off(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool(settings, caplog)
    clock = FrozenClock()
    backoff = Backoff(quick=30, first=4, cap=30)  # a wait far longer than a spawn

    async def kill(nth: int) -> tuple[str, float]:
        pid = await pool.serves(0, nth)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        said = await pool.logged(f"(pid {pid}) exited with code -9; starting another")
        await pool.serves(0, nth + 1)
        return said, time.monotonic() - killed

    async def scenario() -> None:
        async with pool.running(backoff, clock):
            said, took = await kill(0)  # the frozen clock: it served no time at all
            assert "starting another in 4 s (it served 0.0 s; 1 in a row served under 30 s)" in said
            assert took >= 4
            clock.advance(30)
            said, took = await kill(1)
            assert said.endswith("starting another"), said
            assert took < 4, "no wait: only the time to spawn a worker"
            pid = await pool.serves(0, 2)
            os.kill(pid, signal.SIGKILL)  # a quick death again: the first wait, not 8 s
            said = await pool.logged(f"(pid {pid}) exited with code -9; starting another")
            assert "starting another in 4 s (it served 0.0 s; 1 in a row served under 30 s)" in said

    asyncio.run(scenario())


def test_stopping_the_pool_while_a_worker_waits_to_be_replaced_is_prompt(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool(settings, caplog)

    async def scenario() -> None:
        async with pool.running(Backoff(first=60, cap=60)) as workers:
            pid = await pool.serves(0, 0)
            os.kill(pid, signal.SIGKILL)
            await pool.logged(f"(pid {pid}) exited with code -9; starting another in 60 s")
            began = time.monotonic()
            await workers.stop()
            assert time.monotonic() - began < 2
        assert len(pool.serving(0)) == 1, "no replacement was started"

    asyncio.run(scenario())


def test_a_slot_is_in_a_crash_loop_until_a_worker_of_it_serves_long() -> None:
    backoff = Backoff(quick=30, give_up=2)
    slot = _Slot()
    for now in (0.0, 10.0):
        slot.serving_since = now
        slot.died(now + 29, backoff)
    assert slot.streak == 2
    assert slot.looping(100, backoff), "waiting to be replaced"
    slot.serving_since = 100
    assert slot.looping(129, backoff), "its replacement serves, but not long yet"
    assert not slot.looping(130, backoff), "its replacement has served long"
    slot.died(130, backoff)
    assert slot.streak == 0


def test_the_pool_fails_when_every_worker_keeps_dying_soon_after_it_serves(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """One slot in a crash loop: the pool retries. Every slot: it fails, so that the
    process exits and its supervisor sees it."""
    pool = Pool(settings, caplog)

    async def scenario() -> None:
        async with pool.running(Backoff(quick=30, first=0.1, give_up=1)) as workers:
            for slot in (0, 1):
                pid = await pool.serves(slot, 0)
                os.kill(pid, signal.SIGKILL)
                said = await pool.logged(f"(pid {pid}) exited with code -9")
                if slot == 0:
                    assert "starting another in 0.1 s" in said
                    await pool.serves(0, 1)
                    assert not workers.failed.done()
            async with asyncio.timeout(5):
                with pytest.raises(WorkerFailed) as failed:
                    await workers.failed
            assert failed.value.detail == (
                "every gateway worker died within 30 s of serving, 1 times in a row"
                " (their log says why)"
            )
            assert len(pool.serving(1)) == 1, "the last one was not replaced"

    asyncio.run(scenario())
