"""Fixtures for the CLI: Typer's CliRunner, and a control plane served in process.

``cli`` runs ``jitgate`` in this process. Its HTTP calls go to ``create_app(ctx)``
through a TestClient (no socket, no server process), so every command can be tested on
SQLite and PostgreSQL; the end-to-end tests cover the real processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from jitgate.cli.main import app
from jitgate.control.app import create_app
from jitgate.demo.fixture import set_up_demo
from jitgate.services.context import Context

SERVER = "http://control.test"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting of the developer's shell leaks in; the CLI's profiles live in tmp. Logging
    is as a fresh `jitgate` process has it (no handlers, WARNING), whatever an earlier test
    that ran `jitgate up` in this process configured: the in-process server's and HTTP
    client's logs must not reach a command's captured output."""
    for name in list(os.environ):
        if name.startswith("JITGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JITGATE_CLI_CONFIG", str(tmp_path / "cli.json"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.NullHandler()])
    monkeypatch.setattr(root, "level", logging.WARNING)


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def one_line_error(result: Result) -> str:
    """The single ``error: …`` line a failing command printed (and no traceback)."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert not isinstance(result.exception, Exception), result.exception  # SystemExit is fine
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


@dataclass
class Cli:
    """``jitgate`` as a demo principal, talking to the in-process control plane."""

    tokens: dict[str, str]
    state_dir: Path

    def __call__(self, who: str, *args: str) -> Result:
        return run("--server", SERVER, "--token", self.tokens[who], *args)

    def ok(self, who: str, *args: str) -> str:
        result = self(who, *args)
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
        return result.stdout


@pytest.fixture
def cli(ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    state_dir = tmp_path / "state"
    tokens, _ = set_up_demo(ctx, state_dir, "http://127.0.0.1:9")
    with TestClient(create_app(ctx), base_url=SERVER) as client:

        def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
            kwargs.pop("timeout", None)
            return client.request(method, url, **kwargs)

        monkeypatch.setattr(httpx, "request", request)
        yield Cli(tokens, state_dir)
