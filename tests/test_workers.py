"""How many gateway workers run, from the command line and the configuration, and a
worker that cannot start. (Workers serving, revocation across them, replacement and
dying with the main process: tests/e2e/test_workers.py.)"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from jitgate import runner
from jitgate.config import load_settings
from jitgate.runner import gateway_workers
from jitgate.workers import WorkerFailed, WorkerPool
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
