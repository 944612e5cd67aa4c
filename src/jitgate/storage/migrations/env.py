"""Alembic environment: runs on the connection that ``storage.database.migrate`` hands in."""

from __future__ import annotations

from alembic import context

from jitgate.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from a checkout
    from jitgate.config import load_settings
    from jitgate.storage.database import create_db_engine

    connection = create_db_engine(load_settings().database).connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
if context.config.attributes.get("connection") is None:
    connection.commit()
