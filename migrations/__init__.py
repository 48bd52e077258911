"""Alembic migrations of the saga log; `upgrade(url)` applies them all."""

from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from saga.store.database import driver_url

HERE = Path(__file__).parent


def config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine_or_url: sa.Engine | str, revision: str = "head") -> None:
    """Bring the database to `revision`; safe to run again (Alembic records the version)."""
    if isinstance(engine_or_url, str):  # its `?prepare_threshold=` is read, not handed to psycopg
        address, driver = driver_url(engine_or_url)
        engine = sa.create_engine(address, connect_args=driver)
    else:
        engine = engine_or_url
    with engine.begin() as conn:
        cfg = config(str(engine.url))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


@lru_cache(maxsize=1)
def head() -> str:
    """The newest revision this code has (comma-separated while branches are unmerged)."""
    return ",".join(sorted(ScriptDirectory.from_config(config("")).get_heads()))


def current(engine: sa.Engine) -> str | None:
    """The revision the database is at; None if it was never migrated."""
    # Read directly: Alembic's MigrationContext logs two INFO lines per look.
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        revisions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
        return ",".join(sorted(revisions)) or None
