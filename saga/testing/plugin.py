"""The saga test kit as pytest fixtures; the `pytest11` entry point `saga` registers them.

    def test_a_trip_is_booked(saga_kit):
        result = saga_kit.run(book_trip, {"trip_id": "t-1", "card": "4242"})
        assert result.status == "succeeded"

`saga_kit` is a `SagaKit` on a fresh SQLite log (a copy of one migrated once per
session). Override `saga_kit_database_url` to return a PostgreSQL URL and it runs there
instead (migrated first if it is not yet). Importing this module imports nothing beyond
pytest and `saga` itself: every pytest session loads it, and the kit (SQLAlchemy,
Celery, Alembic) is imported only when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from saga.testing.kit import SagaKit


@pytest.fixture
def saga_kit_database_url() -> str | None:
    """The saga log `saga_kit` runs on: None for a fresh SQLite file; override to change it."""
    return None


@pytest.fixture(scope="session")
def saga_kit_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite saga log, migrated once per session; each `saga_kit` copies it."""
    import saga.migrations as migrations

    path = tmp_path_factory.mktemp("saga-kit") / "template.db"
    migrations.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def saga_kit(request: pytest.FixtureRequest,
             saga_kit_database_url: str | None) -> Iterator[SagaKit]:
    """A SagaKit for this test alone, closed (its SQLite file deleted) after it."""
    from saga.testing.kit import SagaKit

    if saga_kit_database_url is None:
        kit = SagaKit(template=request.getfixturevalue("saga_kit_sqlite_template"))
    else:
        kit = SagaKit(saga_kit_database_url)
    try:
        yield kit
    finally:
        kit.close()
