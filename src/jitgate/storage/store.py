"""The unit of work: one database transaction with its repositories.

``with store.transaction() as tx:`` opens a transaction (``BEGIN IMMEDIATE`` on
SQLite), hands out ``tx.directory``, ``tx.access`` and ``tx.audit`` bound to it, and
commits on success or rolls back on any exception: nothing is ever half-written.
``store.read()`` is the same for read-only work, without SQLite's write lock.
Row locks (``lock=True``) are ``SELECT … FOR UPDATE`` on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from jitgate.storage.access_repo import AccessRepo
from jitgate.storage.audit_repo import AuditRepo
from jitgate.storage.database import create_db_engine, migrate
from jitgate.storage.directory_repo import DirectoryRepo


class Tx:
    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.directory = DirectoryRepo(connection)
        self.access = AccessRepo(connection)
        self.audit = AuditRepo(connection)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate_schema: bool = True) -> Store:
        engine = create_db_engine(url)
        if migrate_schema:
            migrate(engine)
        return cls(engine)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.engine.begin() as connection:
            yield Tx(connection)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A unit of work that only reads (on SQLite it does not take the write lock)."""
        with self.engine.connect() as plain:
            connection = plain.execution_options(jitgate_read_only=True)
            with connection.begin():
                yield Tx(connection)

    def close(self) -> None:
        self.engine.dispose()
