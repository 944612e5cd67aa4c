"""The unit of work: one database transaction with its repositories.

``with store.transaction() as tx:`` opens a transaction (``BEGIN IMMEDIATE`` on
SQLite), hands out ``tx.directory``, ``tx.access``, ``tx.audit`` and ``tx.outbox`` bound
to it, and commits on success or rolls back on any exception: nothing is ever
half-written.
``store.read()`` is the same for read-only work, without SQLite's write lock.
Row locks (``lock=True``) are ``SELECT … FOR UPDATE`` on PostgreSQL.

A store may carry an :data:`EventRouter`: every audit append in a transaction hands it
the new events, and what it writes (the notification outbox) commits or rolls back with
them — a change is never announced unless it happened, nor lost if it did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

from sqlalchemy import Connection, Engine

from jitgate.audit.events import ChainedEvent
from jitgate.storage.access_repo import AccessRepo
from jitgate.storage.audit_repo import AuditRepo
from jitgate.storage.database import create_db_engine, migrate
from jitgate.storage.directory_repo import DirectoryRepo
from jitgate.storage.outbox_repo import OutboxRepo


class Tx:
    def __init__(self, connection: Connection, router: EventRouter | None = None) -> None:
        self.connection = connection
        self.directory = DirectoryRepo(connection)
        self.access = AccessRepo(connection)
        self.outbox = OutboxRepo(connection)
        self.audit = AuditRepo(
            connection, on_append=None if router is None else partial(router, self)
        )


EventRouter = Callable[[Tx, Sequence[ChainedEvent]], None]


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.router: EventRouter | None = None  # see the module docstring

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Store:
        engine = create_db_engine(url)
        if migrate_schema:
            migrate(engine)
        return cls(engine)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.engine.begin() as connection:
            yield Tx(connection, self.router)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A unit of work that only reads (on SQLite it does not take the write lock)."""
        with self.engine.connect() as plain:
            connection = plain.execution_options(jitgate_read_only=True)
            with connection.begin():
                yield Tx(connection)

    def close(self) -> None:
        self.engine.dispose()
