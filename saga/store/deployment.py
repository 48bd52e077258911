"""Reads this deployment's id: the random id migration 0005 stored, told apart per database."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from saga.errors import NoDeploymentId
from saga.store.tables import deployment

ID_HEX = 12  # 48 bits: a handful of deployments on one broker never collide


def deployment_id(engine: sa.Engine) -> str:
    """A short hex id every process using this database agrees on, however its URL is spelt.

    The stored random id alone would be shared by a copy of the database (a restored dump,
    `CREATE DATABASE … TEMPLATE`), so it is hashed with the database's name and, on
    PostgreSQL, the server's system identifier (made by initdb; kept by physical replicas,
    so a failover keeps the id).
    """
    with engine.connect() as conn:
        stored = conn.execute(sa.select(deployment.c.id).order_by(deployment.c.id)
                              .limit(1)).scalar()
        if stored is None:
            raise NoDeploymentId(
                "the deployment table is empty (its row was deleted): insert one, e.g. INSERT "
                "INTO deployment (id, created_at) VALUES (md5(random()::text), now()), then "
                "restart every saga process; or set SAGA_QUEUE")
        parts = [stored, *_server_parts(conn)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:ID_HEX]


def _server_parts(conn: sa.Connection) -> list[str]:
    """What a copy of the database does not share: its name, its server."""
    if conn.dialect.name != "postgresql":
        return []  # SQLite: one file; a copied file is the same deployment
    name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    # NULL when the function is missing (some PostgreSQL-compatible servers), false when
    # revoked: then every role of this server leaves it out alike.
    readable = conn.execute(sa.text(
        "SELECT has_function_privilege(to_regprocedure('pg_control_system()'), 'EXECUTE')"
    )).scalar()
    if not readable:
        return [name]
    system = conn.execute(sa.text("SELECT system_identifier FROM pg_control_system()")).scalar()
    return [name, str(system)]
