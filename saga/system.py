"""Assembles the parts from Settings: registry, store, Celery app, dispatcher, engine."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from saga.engine import Engine
from saga.registry import Registry
from saga.settings import Settings
from saga.store import Store
from saga.tasks import CeleryDispatcher, make_celery


@dataclass
class System:
    settings: Settings
    engine: Engine
    celery: Celery


def build(settings: Settings, registry: Registry | None = None) -> System:
    """Everything one process needs; the worker's tasks share this process's engine."""
    registry = registry if registry is not None else Registry.from_modules(settings.sagas)
    store = Store(settings.database_url, redispatch_s=settings.redispatch_s,
                  clock_offset_file=settings.clock_offset_file)
    holder: dict[str, Engine] = {}
    celery = make_celery(settings, engine=lambda: holder["engine"])
    engine = Engine(settings, registry, store, CeleryDispatcher(celery, settings.default_queue))
    holder["engine"] = engine
    return System(settings, engine, celery)
