"""The runs search on SQLite (the embedded log): the same answers as on PostgreSQL
(tests/integration/test_console_runs.py), by `json_tree` instead of a jsonpath."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from saga import Saga, Step, WaitForSignal
from saga.registry import Registry
from saga.run import Role
from saga.settings import Settings
from saga.store.search import RunFilter, input_path
from saga.system import System, build
from saga.testing.dispatch import RecordingDispatcher

PARCEL = Saga("parcel", steps=[Step("pack", lambda ctx: {"packed": True}),
                               WaitForSignal("label"), Step("send", lambda ctx: None)])


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Iterator[System]:
    from saga import migrations

    template = tmp_path_factory.getbasetemp() / "console_search.db"
    if not template.exists():
        migrations.upgrade(f"sqlite:///{template}")
    shutil.copy(template, tmp_path / "saga.db")
    built = build(Settings(database_url=f"sqlite:///{tmp_path / 'saga.db'}",
                           broker_url="memory://"), Registry([PARCEL]))
    built.engine.dispatcher = built.worker.dispatcher = RecordingDispatcher()
    yield built
    built.store.close()


def test_search_status_and_counts_on_sqlite(system):
    start = system.engine.start
    waiting = start("parcel", {"order": {"id": "o-1"}, "weight": 1042}, idempotency_key="t-9")[0]
    system.worker.run_step(waiting, "pack", Role.FORWARD, "parcel", 1, worker="w")
    busy = start("parcel", {"order": {"id": "o-2"}, "tags": ["gift", "o-1x"]})[0]
    store = system.store

    def found(**where) -> list[str]:
        return [run["id"] for run in store.runs_page(RunFilter(**where)).runs]

    assert found() == [busy, waiting]
    assert found(text="o-1") == [waiting]  # nested, whole values only ("o-1x" is another)
    assert found(text="gift") == [busy]  # in a list
    assert found(text="1042") == [waiting]  # a number
    assert found(text="t-9") == [waiting] and found(text=busy) == [busy]
    assert found(text="o-") == [] and found(text="%") == []
    assert found(status="waiting") == [waiting]
    assert store.runs_page(RunFilter()).counts == {
        "all": 2, "running": 2, "waiting": 1, "compensating": 0, "succeeded": 0,
        "compensated": 0, "failed": 0, "cancelled": 0, "parked": 0}


def test_the_search_text_cannot_change_the_jsonpath():
    assert input_path('x" || @ == "y') == '$.** ? (@ == "x\\" || @ == \\"y")'
    assert input_path("12") == '$.** ? (@ == "12" || @ == 12)'
    assert input_path("1e999") == '$.** ? (@ == "1e999")'  # no number: it is not finite
    assert input_path("true") == '$.** ? (@ == "true")'
