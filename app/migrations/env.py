"""Alembic's environment: always run by app/schema.py on a connection it already holds, inside
its transaction (serialised across processes and replicas), never from an ini file."""

from alembic import context

from app.schema import target_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection, target_metadata=target_metadata(), render_as_batch=connection.dialect.name == "sqlite"
)  # SQLite alters by copying
with context.begin_transaction():
    context.run_migrations()
