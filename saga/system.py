"""The composition root: the one place that builds every part from Settings and wires them.

The API, the CLI, the Celery tasks, the sweeper and the embedded stack take the parts
they need from a `System`; no part reaches through another to find a third.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from saga.alerts import Alerts
from saga.clock import Clock
from saga.engine import Engine
from saga.observe import Observers
from saga.observe.logs import RunLog
from saga.observe.metrics import Metrics, swept
from saga.registry import Registry
from saga.schedules.firing import Scheduler
from saga.settings import Settings
from saga.store import Store
from saga.store.deployment import deployment_id
from saga.sweeper import Sweeper
from saga.tasks import CeleryDispatcher, InlineEvents, Namespace, make_celery
from saga.tasks.limits import inline_window_s
from saga.testing import clock as test_clock
from saga.worker.runner import Worker


@dataclass
class System:
    settings: Settings
    registry: Registry
    store: Store
    dispatcher: CeleryDispatcher
    engine: Engine
    worker: Worker
    scheduler: Scheduler
    sweeper: Sweeper
    celery: Celery


def build(settings: Settings, registry: Registry | None = None,
          clock: Clock | None = None) -> System:
    """Everything one process needs; the worker's tasks share this process's parts.

    `clock` defaults to the database's (or the tests' shifted one, when they ask for it).
    """
    registry = registry if registry is not None else Registry.from_modules(settings.sagas)
    store = Store(settings.database_url, clock or test_clock.from_env(),
                  redispatch_s=settings.redispatch_s)
    parts: dict[str, Worker] = {}
    # The queue and id of this deployment, read from its database on first use (saga/tasks).
    namespace = Namespace(settings, lambda: deployment_id(store.engine))
    celery = make_celery(settings, worker=lambda: parts["worker"], namespace=namespace)
    dispatcher = CeleryDispatcher(celery, namespace)
    alerts = Alerts(settings.alert_webhook, settings.alert_hook)
    observers = Observers(RunLog())
    if settings.metrics == "on":
        observers.add(Metrics())
    if settings.otel == "on":  # imported only then: OpenTelemetry is an optional extra
        from saga.observe.traces import Traces

        observers.add(Traces.from_env())
    engine = Engine(registry, store, dispatcher, alerts, lease_s=settings.lease_s,
                    observer=observers)
    # Steps run inline have no message: their task events for Flower are sent by hand.
    worker = parts["worker"] = Worker(engine, registry, dispatcher, settings.inline_steps,
                                      attempts=InlineEvents(celery),
                                      inline_for_s=inline_window_s(settings))
    scheduler = Scheduler(engine, store, registry, settings.sweep_batch)
    sweeper = Sweeper(engine, store, registry, scheduler, settings,
                      on_sweep=swept if settings.metrics == "on" else None)
    return System(settings, registry, store, dispatcher, engine, worker, scheduler, sweeper,
                  celery)
