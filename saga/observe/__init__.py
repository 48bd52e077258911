"""Seeing what runs do: every committed change, told to logs, metrics and traces.

The engine hands each commit's `Change`s to one `Observers`, after the commit, so what is
logged, counted or traced is what the saga log holds. A failing observer is logged and
skipped; it never undoes or blocks the work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from saga.engine import Observer
from saga.events import Change

__all__ = ["Observers"]

log = logging.getLogger("saga.observe")


class Observers:
    """Several observers as one."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def close(self) -> None:
        """Send what observers hold back (batched spans) before the process ends."""
        for observer in self.observers:
            shutdown = getattr(observer, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception:
                    log.exception("observer %s failed to shut down", type(observer).__name__)

    def committed(self, changes: Sequence[Change]) -> None:
        for observer in self.observers:
            try:
                observer.committed(changes)
            except Exception:
                log.exception("observer %s failed", type(observer).__name__)
