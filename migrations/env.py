"""Alembic environment: runs the saga log's migrations on the connection it is given."""

from alembic import context

from saga.store import metadata

config = context.config
connectable = config.attributes.get("connection")


def run() -> None:
    if connectable is None:
        from sqlalchemy import create_engine

        with create_engine(config.get_main_option("sqlalchemy.url") or "").connect() as conn:
            _migrate(conn)
    else:
        _migrate(connectable)


def _migrate(conn) -> None:
    context.configure(connection=conn, target_metadata=metadata,
                      render_as_batch=conn.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
