"""A key private to this deployment, derived from the random id its database keeps."""

from __future__ import annotations

import hashlib
import hmac

import sqlalchemy as sa

from saga.errors import NoDeploymentId
from saga.store.tables import deployment


def deployment_secret(engine: sa.Engine, purpose: str) -> bytes:
    """32 bytes every process using this database derives alike, one per `purpose`.

    The seed is the random id migration 0005 stored: only the database holds it (the queue
    name is a truncated hash of it and more), so whoever can read it can read the log
    anyway. A copy of the database (a restored dump) shares it, and so its secrets.
    """
    with engine.connect() as conn:
        stored = conn.execute(sa.select(deployment.c.id).order_by(deployment.c.id)
                              .limit(1)).scalar()
    if stored is None:
        raise NoDeploymentId("the deployment table is empty (its row was deleted): insert one, "
                             "e.g. INSERT INTO deployment (id, created_at) VALUES "
                             "(md5(random()::text), now()), then restart every saga process")
    return hmac.new(stored.encode(), purpose.encode(), hashlib.sha256).digest()
