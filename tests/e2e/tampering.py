"""Ways to tamper with a stopped instance's audit log, each on a copy of its database.

A copy is a SQLite backup, or a PostgreSQL database made from the original as a
template, so that every kind of tampering can be checked side by side. Each way is
made from the chain as it was (``events``, in seq order) and strikes at one seq.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from jitgate.audit.chain import recompute_hash
from jitgate.audit.events import ChainedEvent
from jitgate.storage.audit_repo import AuditRepo
from jitgate.storage.store import Store, Tx
from tests.e2e.conftest import postgres_database

if TYPE_CHECKING:
    from tests.e2e.conftest import Demo

Tamper = Callable[[Tx, int], None]


def _update(tx: Tx, seq: int, **columns: object) -> None:
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    tx.connection.execute(
        text(f"UPDATE audit_events SET {assignments} WHERE seq = :seq"), {**columns, "seq": seq}
    )


def edit(events: list[ChainedEvent]) -> Tamper:
    """Change who did it, leaving the hash alone."""
    return lambda tx, n: _update(tx, n, actor="mallory")


def edit_and_rehash(events: list[ChainedEvent]) -> Tamper:
    """Change who did it and recompute that event's hash (the next one no longer links)."""

    def tamper(tx: Tx, n: int) -> None:
        _update(
            tx, n, actor="mallory", hash=recompute_hash(replace(events[n - 1], actor="mallory"))
        )

    return tamper


def delete(events: list[ChainedEvent]) -> Tamper:
    return lambda tx, n: tx.connection.execute(
        text("DELETE FROM audit_events WHERE seq = :n"), {"n": n}
    )


def reorder(events: list[ChainedEvent]) -> Tamper:
    """Swap events ``n`` and ``n + 1``."""

    def tamper(tx: Tx, n: int) -> None:
        for old, new in ((n, -1), (n + 1, n), (-1, n + 1)):
            tx.connection.execute(
                text("UPDATE audit_events SET seq = :new WHERE seq = :old"),
                {"old": old, "new": new},
            )

    return tamper


def insert(events: list[ChainedEvent]) -> Tamper:
    """A forged event after ``n``, correctly hashed onto ``n``; later events move up one."""

    def tamper(tx: Tx, n: int) -> None:
        c = tx.connection
        c.execute(text("UPDATE audit_events SET seq = seq + 1000000 WHERE seq > :n"), {"n": n})
        c.execute(text("UPDATE audit_events SET seq = seq - 999999 WHERE seq > 1000000"))
        forged = replace(events[n - 1], seq=n + 1, actor="mallory", prev_hash=events[n - 1].hash)
        c.execute(
            text(
                "INSERT INTO audit_events (seq, at, type, actor, principal, api, grant_id, "
                "request_id, data, prev_hash, hash) SELECT :seq, at, type, :actor, principal, "
                "api, grant_id, request_id, data, :prev, :hash FROM audit_events WHERE seq = :n"
            ),
            {
                "seq": n + 1,
                "actor": forged.actor,
                "prev": forged.prev_hash,
                "hash": recompute_hash(forged),
                "n": n,
            },
        )

    return tamper


def rewrite_tail(events: list[ChainedEvent]) -> Tamper:
    """Edit ``n`` and rehash every later event: a consistent chain, which only a signed
    checkpoint (or the recorded head) can show to be false."""

    def tamper(tx: Tx, n: int) -> None:
        prev = events[n - 2].hash
        for event in events[n - 1 :]:
            actor = "mallory" if event.seq == n else event.actor
            changed = replace(event, actor=actor, prev_hash=prev)
            prev = recompute_hash(changed)
            _update(tx, event.seq, actor=actor, prev_hash=changed.prev_hash, hash=prev)

    return tamper


def truncate(events: list[ChainedEvent]) -> Tamper:
    """Delete every event from ``n`` on (and the head row with them)."""

    def tamper(tx: Tx, n: int) -> None:
        tx.connection.execute(text("DELETE FROM audit_events WHERE seq >= :n"), {"n": n})
        tx.connection.execute(
            text("UPDATE audit_head SET seq = :seq, hash = :hash"),
            {"seq": n - 1, "hash": events[n - 2].hash},
        )

    return tamper


@contextlib.contextmanager
def database_copy(demo: Demo, tmp_path: Path, name: str) -> Iterator[str]:
    if demo.backend == "sqlite":
        path = tmp_path / f"{name}.db"
        source = sqlite3.connect(demo.database_url.removeprefix("sqlite:///"))
        target = sqlite3.connect(path)
        source.backup(target)
        source.close()
        target.close()
        yield f"sqlite:///{path}"
        return
    assert demo.postgres_url is not None
    template = demo.database_url.rpartition("/")[2]
    with postgres_database(demo.postgres_url, template=template) as url:
        yield url


def read_events(url: str) -> tuple[list[ChainedEvent], int | None]:
    """The stored chain, and the seq of its latest signed checkpoint."""
    store = Store.open(url, migrate_schema=False)
    try:
        with store.read() as tx:
            repo = AuditRepo(tx.connection)
            checkpoint = repo.latest_checkpoint()
            return list(repo.stream()), checkpoint.seq if checkpoint else None
    finally:
        store.close()


def apply(url: str, tamper: Tamper, seq: int) -> None:
    store = Store.open(url, migrate_schema=False)
    try:
        with store.transaction() as tx:
            tamper(tx, seq)
    finally:
        store.close()
