"""Shared fixtures: the same service tests on SQLite and on a real PostgreSQL.

PostgreSQL comes from ``JITGATE_TEST_POSTGRES_URL`` (default: the local server,
``postgresql://postgres@127.0.0.1:5432/test``). Each test run creates its own fresh
database there and drops it at the end; tests truncate the tables between them. Under
``CI=true`` an unreachable PostgreSQL fails the run; elsewhere those tests are skipped
with a message saying how to enable them.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from jitgate.audit.events import NewEvent
from jitgate.clock import FrozenClock
from jitgate.policy import DEMO_POLICY_PATH, load_policy
from jitgate.policy.model import Policy
from jitgate.secrets import SecretBox
from jitgate.services.bootstrap import ensure_keyring
from jitgate.services.context import Context
from jitgate.storage.store import Store
from jitgate.storage.tables import metadata

POSTGRES_URL = os.environ.get(
    "JITGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _admin_connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    try:
        admin = _admin_connect()
    except psycopg.OperationalError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable under CI=true: {exc}")
        pytest.skip(
            f"PostgreSQL at {POSTGRES_URL} is unreachable; start it or set "
            "JITGATE_TEST_POSTGRES_URL to run these tests"
        )
    name = f"jitgate_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with _admin_connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _pg_store(postgres_url: str) -> Iterator[Store]:
    store = Store.open(postgres_url)
    yield store
    store.close()


def _truncate(store: Store) -> None:
    with store.transaction() as tx:
        for table in reversed(metadata.sorted_tables):
            tx.connection.execute(table.delete())
        tx.connection.execute(
            text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, :h)"), {"h": "0" * 64}
        )


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated once per run; each test starts from a copy of it."""
    path = tmp_path_factory.mktemp("template") / "jitgate.db"
    Store.open(f"sqlite:///{path}").close()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store: SQLite in a temporary file (a copy of a file migrated once
    per run), or the run's PostgreSQL."""
    if request.param == "sqlite":
        copy = tmp_path / "jitgate.db"
        shutil.copyfile(request.getfixturevalue("_migrated_sqlite"), copy)
        copy.chmod(0o600)
        store = Store.open(f"sqlite:///{copy}", migrate_schema=False)
        yield store
        store.close()
        return
    pg: Store = request.getfixturevalue("_pg_store")
    _truncate(pg)
    yield pg


class ListSink:
    """An audit sink that keeps events in memory (tests read them directly)."""

    def __init__(self) -> None:
        self.events: list[NewEvent] = []
        self.healthy = True

    def submit(self, event: NewEvent) -> None:
        self.events.append(event)

    def try_submit(self, event: NewEvent) -> bool:
        self.events.append(event)
        return True


class RecordingFeed:
    def __init__(self) -> None:
        self.ended: list[str] = []
        self.api_changes = 0
        self.key_changes = 0

    def grant_ended(self, grant_id: str, expires_at: object) -> None:
        self.ended.append(grant_id)

    def apis_changed(self) -> None:
        self.api_changes += 1

    def keys_changed(self) -> None:
        self.key_changes += 1


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(secrets.token_bytes(32))


def make_context(store: Store, clock: FrozenClock, box: SecretBox, policy: Policy) -> Context:
    """A service context for tests: in-memory audit sink, recording feed."""
    return Context(
        store=store,
        clock=clock,
        box=box,
        issuer="http://jitgate.test",
        gateway_url="http://gateway.test",
        policy=policy,
        keyring=ensure_keyring(store, box, clock),
        audit=ListSink(),
        feed=RecordingFeed(),
    )


@pytest.fixture
def ctx(store: Store, clock: FrozenClock, box: SecretBox) -> Context:
    """A service context on the demo policy, with a frozen clock and recording feed."""
    return make_context(store, clock, box, load_policy(DEMO_POLICY_PATH))
