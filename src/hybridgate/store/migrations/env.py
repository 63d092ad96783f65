"""Alembic environment: always given a live connection by hybridgate.store (never run from alembic.ini)."""

from __future__ import annotations

from alembic import context

from hybridgate.store._tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("hybridgate's migrations run through `hybridgate db upgrade` or at gateway start")

# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
