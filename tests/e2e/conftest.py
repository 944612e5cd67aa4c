"""End to end: ``jitgate up --demo`` as a real process, the CLI as real processes.

One server per backend per module (``demo``): SQLite in a temporary state directory,
or PostgreSQL in a database of its own, created for the instance and dropped after it
(each instance needs an empty one). Ports are free ones, so several runs can go side by
side. Everything the processes print, and every HTTP answer the tests receive, is kept
so that the tests can show that the upstream secret never appeared in any of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psycopg
import pytest

SCRIPT = Path(sys.executable).parent / "jitgate"
JITGATE = (
    [str(SCRIPT)]
    if SCRIPT.exists()
    else [sys.executable, "-c", "from jitgate.cli.main import app; app()"]
)
DEMO_SECRET_PREFIX = "sk_demo_"  # how every demo upstream secret starts
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_environment() -> dict[str, str]:
    """This process's environment without any jitgate setting, and wide tables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    return env


@contextlib.contextmanager
def postgres_database(postgres_url: str, template: str | None = None) -> Iterator[str]:
    """A new, empty (or ``template``'s copy) database on the server; dropped afterwards."""
    name = f"jitgate_e2e_{os.getpid()}_{secrets.token_hex(4)}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"{clause}')
    base, _, _ = postgres_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    """One ``jitgate up --demo`` process (or what ``command`` says); ``start`` returns once
    it said it is up."""

    state_dir: Path
    database_url: str | None
    control_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    upstream_port: int = field(default_factory=free_port)
    args: tuple[str, ...] = ()  # more options of ``jitgate up --demo``
    output: list[str] = field(default_factory=list)  # stdout and stderr of every run
    process: subprocess.Popen[str] | None = None
    _readers: list[threading.Thread] = field(default_factory=list)

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def environment(self) -> dict[str, str]:
        env = base_environment()
        env.update(
            {
                "JITGATE_STATE_DIR": str(self.state_dir),
                "JITGATE_CONTROL__LISTEN": f"127.0.0.1:{self.control_port}",
                "JITGATE_GATEWAY__LISTEN": f"127.0.0.1:{self.gateway_port}",
                "JITGATE_DEMO__UPSTREAM_LISTEN": f"127.0.0.1:{self.upstream_port}",
            }
        )
        if self.database_url:
            env["JITGATE_DATABASE_URL"] = self.database_url
        return env

    def command(self) -> list[str]:
        return [*JITGATE, "up", "--demo", *self.args]

    def served(self) -> tuple[str, ...]:
        """The base URLs whose ``/healthz`` must answer once it is up."""
        return (self.control_url, self.gateway_url)

    def start(self) -> None:
        assert not self.running
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        up = threading.Event()
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, up), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()
        if not up.wait(START_TIMEOUT) or not self.running:
            self.stop()
            command = " ".join(["jitgate", *self.command()[len(JITGATE) :]])
            pytest.fail(f"{command} did not start:\n" + "".join(self.output[-40:]))
        for url in self.served():
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200, url

    def _read(self, stream: IO[str], up: threading.Event) -> None:
        for line in stream:
            self.output.append(line)
            if line.startswith("jitgate is up."):
                up.set()
        up.set()  # the process ended: start() sees it is not running

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.process.returncode

    def text(self) -> str:
        return "".join(self.output)


@dataclass
class Cli:
    """The ``jitgate`` command as a real process, with its own profile file."""

    config: Path
    transcript: list[str] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        return {**base_environment(), "JITGATE_CLI_CONFIG": str(self.config)}

    def command(self, profile: str | None, *args: str) -> list[str]:
        return [*JITGATE, *(["--profile", profile] if profile else []), *args]

    def __call__(
        self, profile: str | None, *args: str, expect: int | None = 0
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.command(profile, *args),
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.transcript.extend([done.stdout, done.stderr])
        if expect is not None:
            assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, profile: str, *args: str) -> Any:
        return json.loads(self(profile, *args, "-o", "json").stdout)

    def many(self, commands: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
        """Run independent commands at the same time (they share no profile writes)."""
        running = [
            subprocess.Popen(
                self.command(None, *args),
                env=self.environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        done = []
        for args, process in zip(commands, running, strict=True):
            out, err = process.communicate(timeout=120)
            self.transcript.extend([out, err])
            done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
        return done


@dataclass
class Demo:
    """A running demo instance, the CLI logged in as alice, bob and admin, and HTTP helpers."""

    backend: str
    server: Server
    cli: Cli
    database_url: str  # what ``audit verify --database`` reads
    postgres_url: str | None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))
    answers: list[httpx.Response] = field(default_factory=list)

    @property
    def tokens(self) -> dict[str, str]:
        tokens: dict[str, str] = json.loads(
            (self.server.state_dir / "demo-tokens.json").read_text()
        )
        return tokens

    def control(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = self.http.request(
            method, self.server.control_url + path, headers=headers, **kwargs
        )
        self.answers.append(response)
        return response

    def gateway(self, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        response = self.http.request(
            method, self.server.gateway_url + path, headers=headers, **kwargs
        )
        self.answers.append(response)
        return response

    def grant(self, who: str = "alice", scope: str = "GET /v1/**") -> tuple[str, str]:
        """A grant through the API (fast, for set-up): its id and a token."""
        body = {"api": "demo", "scopes": [scope], "duration": "10m", "reason": "e2e set-up"}
        created = self.control(who, "POST", "/v1/requests", json=body).json()
        assert created["status"] == "approved", created
        issued = self.control(who, "POST", f"/v1/grants/{created['grant_id']}/token").json()
        return created["grant_id"], issued["token"]


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"urn:jitgate:problem:{code}", body
    assert body["status"] == status


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    root = tmp_path_factory.mktemp(f"e2e-{request.param}")
    state = root / "state"
    with contextlib.ExitStack() as stack:
        postgres_url = None
        if request.param == "postgres":
            postgres_url = request.getfixturevalue("postgres_url")
            database_url = stack.enter_context(postgres_database(postgres_url))
            server = Server(state, database_url)
        else:
            database_url = f"sqlite:///{state / 'jitgate.db'}"
            server = Server(state, None)
        stack.callback(server.stop)
        server.start()
        cli = Cli(root / "cli.json")
        instance = Demo(request.param, server, cli, database_url, postgres_url)
        stack.callback(instance.http.close)
        tokens_file = str(state / "demo-tokens.json")
        for who in ("alice", "bob", "admin"):  # step 1 of the walk-through
            done = cli(who, "login", "--server", server.control_url, "--token-file", tokens_file,
                       "--key", who)  # fmt: skip
            assert f"as {who} (profile {who}" in done.stdout
        yield instance
