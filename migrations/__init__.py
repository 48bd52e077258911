"""Alembic migrations of the saga log; `upgrade(url)` applies them all."""

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent


def config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine_or_url: sa.Engine | str, revision: str = "heads") -> None:
    """Bring the database to `revision`; safe to run again (Alembic records the version)."""
    engine = sa.create_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    with engine.begin() as conn:
        cfg = config(str(engine.url))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
