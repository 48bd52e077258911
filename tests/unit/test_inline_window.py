"""Steps run inline from one message stop before the broker's redelivery limit could pass.

The message stays unacknowledged until its last inline step is done, and only steps without
a time limit run inline, so their sum has no bound but the window (saga.tasks.limits).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from saga import Saga, Step
from saga.engine import Engine
from saga.registry import Registry
from saga.settings import Settings
from saga.store import Store
from saga.tasks.limits import broker_limit_problems, inline_window_s
from saga.testing.dispatch import RecordingDispatcher
from saga.worker import runner
from saga.worker.runner import Worker

STEP_S = 10.0  # each step "takes" this long on the test's clock
CALLS: list[str] = []
NOW = [0.0]


def slow(ctx):
    CALLS.append(ctx.step)
    NOW[0] += STEP_S
    return None


CHAIN = Saga("chain", steps=[Step(name, slow) for name in "abcde"])


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    from saga import migrations

    template = tmp_path_factory.getbasetemp() / "inline-window.db"
    if not template.exists():
        migrations.upgrade(f"sqlite:///{template}")
    shutil.copy(template, tmp_path / "saga.db")
    CALLS.clear()
    NOW[0] = 0.0
    monkeypatch.setattr(runner, "monotonic", lambda: NOW[0])
    opened = Store(f"sqlite:///{tmp_path / 'saga.db'}")
    yield opened
    opened.close()


def deliveries(store: Store, window_s: float | None, saga: Saga = CHAIN) -> list[list[str]]:
    """Run one saga to its end; the steps each delivered message ran."""
    registry = Registry([saga])
    dispatcher = RecordingDispatcher()
    engine = Engine(registry, store, dispatcher, lease_s=30)
    worker = Worker(engine, registry, dispatcher, inline_steps=50, inline_for_s=window_s)
    engine.start(saga.name, {})
    messages = []
    while sent := dispatcher.take():
        for hint in sent:
            before = len(CALLS)
            worker.run_step(hint.run_id, hint.command.step, hint.command.role, hint.saga,
                            hint.version, worker="w")
            messages.append(CALLS[before:])
    return messages


def test_inline_steps_stop_at_the_window_and_the_next_one_is_published(store):
    """Given five 10 s steps and a 25 s window, When the first message arrives, Then it runs
    a, b and c (c was taken on at 20 s, inside the window) and publishes d, whose message
    runs d and e: no message is held much past the window."""
    assert deliveries(store, 25.0) == [["a", "b", "c"], ["d", "e"]]


def test_without_a_window_one_message_runs_the_whole_chain(store):
    assert deliveries(store, None) == [["a", "b", "c", "d", "e"]]


@pytest.mark.parametrize(("broker", "setting", "window"), [
    ("redis://127.0.0.1:6379/0", "visibility_timeout_s", 300),
    ("amqp://guest:guest@127.0.0.1:5672//", "consumer_timeout_s", 300),
    ("memory://", "visibility_timeout_s", None),
])
def test_the_window_is_half_the_brokers_redelivery_limit(broker, setting, window):
    assert inline_window_s(Settings(broker_url=broker, **{setting: 600})) == window


TIMED = Saga("timed", steps=[Step(n, slow, timeout=timedelta(seconds=50)) for n in "ab"])


def test_steps_with_a_limit_run_one_per_message_so_each_limit_is_checked_alone(store):
    """Given two steps of 50 s (55 s hard), When the run goes, Then each has a message of its
    own even with no window, so the check compares each hard limit with the visibility
    timeout alone, not their sum: 60 s passes, 55 s is refused."""
    assert deliveries(store, None, TIMED) == [["a"], ["b"]]
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", visibility_timeout_s=60)
    assert broker_limit_problems(settings, [TIMED]) == []
    assert broker_limit_problems(settings.with_(visibility_timeout_s=55), [TIMED])
