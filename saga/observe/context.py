"""Which run and step a log line is about: bound while an attempt runs, put on every record.

The worker binds the attempt's fields around the call to the step's code (`bound`); the
handler's `ContextFilter` copies them onto every record logged meanwhile in that thread,
whoever logs it: the step's own code, a library it calls, Celery. A record that already
carries a field (the `saga.runs` lines name their own) keeps its own value.

    with bound(run_id=claim.run_id, step=claim.step, attempt=claim.attempt):
        log.info("charging")  # carries run_id, step and attempt
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

__all__ = ["FIELDS", "ContextFilter", "bound", "current"]

# The fields every line about a run carries, in the order the text format prints them.
FIELDS = ("run_id", "saga", "version", "step", "role", "attempt", "worker")

_fields: ContextVar[Mapping[str, Any]] = ContextVar(
    "saga_log_fields", default=MappingProxyType({}))


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Put `fields` on every record logged in this context until the block ends."""
    token = _fields.set({**_fields.get(), **fields})
    try:
        yield
    finally:
        _fields.reset(token)


def current() -> Mapping[str, Any]:
    """The fields bound now ({} outside any attempt)."""
    return _fields.get()


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record that does not name them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _fields.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
