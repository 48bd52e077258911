"""Configuration, read once from `SAGA_*` environment variables into a frozen value."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

PREFIX = "SAGA_"
POSITIVE = ("lease_s", "sweep_interval_s", "redispatch_s", "sweep_batch", "max_body_bytes",
            "worker_concurrency", "visibility_timeout_s", "consumer_timeout_s")


@dataclass(frozen=True)
class Settings:
    """Every setting, its default, and (in `SAGA_<NAME>`) where it is read from.

    The defaults are the embedded stack: a SQLite file and an in-process broker, so the
    demo runs on a bare machine. Production sets the database and broker URLs.
    """

    database_url: str = "sqlite:///saga.db"
    broker_url: str = "memory://"
    sagas: tuple[str, ...] = ()  # modules holding definitions, imported at start
    lease_s: float = 30.0  # a running step's lease; heartbeats renew it every lease_s / 3
    sweep_interval_s: float = 1.0  # how often the sweeper looks for due work
    redispatch_s: float = 10.0  # a queued step not claimed after this is published again
    sweep_batch: int = 500  # rows one sweep query takes at most
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    worker_concurrency: int = 2
    inline_steps: int = 50  # steps a worker runs on from one message, without publishing each
    default_queue: str = "saga"
    result_backend: str = ""  # only for RemoteTask steps, which wait for another worker's result
    alert_webhook: str = ""  # POSTed a JSON alert on every timeout and every run needing a person
    alert_hook: str = ""  # "module:function" called with the same alert
    visibility_timeout_s: int = 3600  # Redis: redelivery of unacknowledged messages
    consumer_timeout_s: int = 1800  # RabbitMQ's consumer_timeout, as the server is configured
    retention_days: float = 0  # finished runs older than this are pruned (0: kept forever)
    clock_offset_file: str = ""  # tests only: a file of seconds added to the database clock

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Settings from `SAGA_*` variables; `overrides` win over the environment."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        for name in POSITIVE:
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{PREFIX}{name.upper()} must be a positive number, not {value}")
        if not math.isfinite(self.retention_days) or self.retention_days < 0:
            raise ValueError(f"{PREFIX}RETENTION_DAYS must be 0 (keep) or more days, "
                             f"not {self.retention_days}")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _parse(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
