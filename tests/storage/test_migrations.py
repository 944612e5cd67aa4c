"""The migrations build exactly the schema that ``storage/tables.py`` declares."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from jitgate.storage.store import Store
from jitgate.storage.tables import metadata


def test_migrations_match_the_declared_schema(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        differences = [
            d
            for d in compare_metadata(context, metadata)
            # Alembic's own bookkeeping table is not part of the declared schema.
            if not (d[0] == "remove_table" and d[1].name == "alembic_version")
        ]
    assert differences == []
