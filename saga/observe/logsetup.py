"""A process's logging, set once: text for a person or one JSON object a line (SAGA_LOG_FORMAT).

Every record goes through one handler on the root logger, the saga's own, Celery's and
the step code's alike; its `ContextFilter` adds the run and step of the attempt that
is running, and the formatter prints them:

    2025-06-01 12:00:00,123 INFO saga.runs step.succeeded in 35 ms [run_id=5f0c… saga=order_fulfillment version=1 step=charge_card role=forward attempt=1 worker=saga-1@host/4242]
    {"time": "2025-06-01T12:00:00.123+00:00", "level": "INFO", "logger": "saga.runs", "message": "step.succeeded in 35 ms", "event": "step.succeeded", "run_id": "5f0c…", …}
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from saga.observe.context import FIELDS, ContextFilter

__all__ = ["configure", "TextFormatter", "JsonFormatter", "formatter"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class TextFormatter(logging.Formatter):
    """The classic line, then the run's fields as `[name=value …]` (those the record has)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(f"{name}={value}" for name in FIELDS
                          if (value := getattr(record, name, None)) is not None)
        return f"{line} [{fields}]" if fields else line


class JsonFormatter(_JsonFormatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, then the
    record's own fields (`event`, `run_id`, `duration_ms`…) and `exc_info` if any."""

    def __init__(self) -> None:
        super().__init__(["asctime", "levelname", "name", "message"],
                         rename_fields={"asctime": "time", "levelname": "level",
                                        "name": "logger"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def formatter(format: str) -> logging.Formatter:
    """The formatter SAGA_LOG_FORMAT names: "text" or "json"."""
    if format == "json":
        return JsonFormatter()
    if format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {format!r}: use text or json")


_installed: logging.Handler | None = None  # the handler `configure` added, to replace


def configure(level: str | int = "INFO", format: str = "text",
              stream: IO[str] | None = None) -> logging.Handler | None:
    """Log at `level` in `format` to `stream` (stderr by default): the process's one handler.

    As `logging.basicConfig`, it leaves a process whose logging is set already alone (a
    test runner's, an application embedding the saga) and returns None then; called
    again, it replaces the handler it added before. Celery's worker is told to keep it.
    """
    global _installed
    chosen = formatter(format)
    # Alembic announces its plugins at INFO on every import: noise before any message.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    root = logging.getLogger()
    if root.handlers and _installed not in root.handlers:
        return None
    if _installed is not None:
        root.removeHandler(_installed)
    # The stream as it is now, as basicConfig does: Celery may later point sys.stderr at
    # a logger, and a handler writing there would log its own lines again.
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    _installed = handler
    handler.addFilter(ContextFilter())
    handler.setFormatter(chosen)
    root.addHandler(handler)
    root.setLevel(level)
    _keep_from_celery()
    return handler


def _keep_from_celery() -> None:
    """Celery's worker sets up logging of its own (a handler and format for task loggers,
    its level on the root) unless something answers its `setup_logging` signal: ours is."""
    from celery import signals  # the worker's edge; imported here to keep this module plain

    signals.setup_logging.connect(_already_set, weak=False, dispatch_uid="saga.logsetup")


def _already_set(**_: Any) -> None:
    """Celery's `setup_logging` receiver: the process's logging is set already."""
