"""Configuration, read once from `SAGA_*` environment variables into a frozen value."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

PREFIX = "SAGA_"
POSITIVE = ("lease_s", "sweep_interval_s", "redispatch_s", "sweep_batch", "max_body_bytes",
            "worker_concurrency", "visibility_timeout_s", "consumer_timeout_s", "backfill_cap")
AUTH_MODES = ("on", "off")
LOG_FORMATS = ("text", "json")


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
    # The broker queue of step messages. "": one per database, `saga.<deployment id>`, so
    # two deployments on one broker never share a queue (saga/tasks, README).
    queue: str = ""
    default_queue: str = ""  # the older name of `queue` (SAGA_DEFAULT_QUEUE), still read
    # RabbitMQ only: "quorum" declares that queue replicated (x-queue-type, as RabbitMQ and
    # Celery's task_default_queue_type call it); "classic" declares it as before.
    queue_type: str = "classic"
    result_backend: str = ""  # only for RemoteTask steps, which wait for another worker's result
    alert_webhook: str = ""  # POSTed a JSON alert on every timeout and every run needing a person
    alert_hook: str = ""  # "module:function" called with the same alert
    visibility_timeout_s: int = 3600  # Redis: redelivery of unacknowledged messages
    consumer_timeout_s: int = 1800  # RabbitMQ's consumer_timeout, as the server is configured
    retention_days: float = 0  # finished runs older than this are pruned (0: kept forever)
    auth: str = "on"  # "off": the API needs no token (for the embedded demo only)
    # Starts, signals and backfills per API token, together (the `limits` syntax, "a;b" for
    # several). Generous: a stop against flooding, not a quota. One window, so one counter
    # round trip per start; about twice what one 2-core API serves (bench/api_load.py).
    rate_limit: str = "1000/second"
    rate_limit_storage: str = ""  # the counters' store; "": the broker if Redis, else memory://
    backfill_cap: int = 1000  # runs one API backfill may start unless it sets max_runs higher
    log_format: str = "text"  # "json": one JSON object per log line (saga/observe/logsetup.py)
    # "on": each run is an OpenTelemetry trace, sent where the OTEL_* variables say
    # (needs pip install 'saga-orchestrator[otel]'; saga/observe/traces.py).
    otel: str = "off"
    # "off": no process counts Prometheus metrics (for deployments without Prometheus;
    # the API's /metrics still reads the log's gauges per scrape).
    metrics: str = "on"
    # Prometheus metrics of `saga worker`'s pool and of `saga sweeper`, each on its own port
    # (0: not served). The API serves its own at /metrics (saga/observe/metrics.py).
    worker_metrics_port: int = 0
    sweeper_metrics_port: int = 0
    task_events: str = "on"  # "off": workers and publishers send no task events (Flower sees none)
    # `saga flower`'s login: "user:password", comma-separated for several (Flower's basic auth).
    flower_basic_auth: str = field(default="", repr=False)
    # Encrypts the web console's session cookies; "": derived from the database's private
    # deployment row, so every API process agrees. Changing it signs everyone out.
    console_secret: str = field(default="", repr=False)

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
        if self.auth not in AUTH_MODES:
            raise ValueError(f"{PREFIX}AUTH must be on or off, not {self.auth!r}")
        if self.task_events not in ("on", "off"):
            raise ValueError(f"{PREFIX}TASK_EVENTS must be on or off, not {self.task_events!r}")
        check_log_format(self.log_format)
        check_otel(self.otel)
        if self.metrics not in ("on", "off"):
            raise ValueError(f"{PREFIX}METRICS must be on or off, not {self.metrics!r}")
        for name in ("worker_metrics_port", "sweeper_metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{PREFIX}{name.upper()} must be a port, 1 to 65535 (0: off), "
                                 f"not {getattr(self, name)}")
            if self.metrics == "off" and getattr(self, name):  # it would serve nothing
                raise ValueError(f"{PREFIX}{name.upper()}={getattr(self, name)} serves metrics "
                                 f"that {PREFIX}METRICS=off does not count: unset one of them")
        if not math.isfinite(self.retention_days) or self.retention_days < 0:
            raise ValueError(f"{PREFIX}RETENTION_DAYS must be 0 (keep) or more days, "
                             f"not {self.retention_days}")
        object.__setattr__(self, "database_url", database_url(self.database_url))
        check_urls(self)
        check_queue(self)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def explicit_queue(self) -> str:
        """SAGA_QUEUE (or its older name SAGA_DEFAULT_QUEUE); "" when the database names it."""
        return self.queue or self.default_queue


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


# -- URLs: which schemes work, and how to print one without its secrets ---------------------

DATABASE_HELP = "use postgresql://user:password@host:5432/db (or sqlite:///path/saga.db on one machine)"
BROKER_SCHEMES = ("amqp", "amqps", "pyamqp", "redis", "rediss", "memory")
BROKER_HELP = ("use amqp://user:password@host:5672// (RabbitMQ) or redis://host:6379/0 "
               "(or memory:// in one process)")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_KEY = re.compile(r"pass|secret|token|key|auth|sig|cred", re.IGNORECASE)


def database_url(url: str) -> str:
    """The URL SQLAlchemy needs: `postgres://` and `postgresql://` mean psycopg 3.

    SQLAlchemy rejects `postgres://` and reads `postgresql://` as psycopg2, which is not
    installed; every other database is refused with what to use instead.
    """
    scheme = _scheme(url)
    if scheme is None:
        raise ValueError(f"{PREFIX}DATABASE_URL={redacted(url)!r} is not a URL: {DATABASE_HELP}")
    dialect, _, driver = scheme.lower().partition("+")
    rest = url[len(scheme) + 3:]
    if dialect in ("postgres", "postgresql") and driver in ("", "psycopg"):
        if "prepare_threshold" in rest:  # ?prepare_threshold=none: behind a transaction pooler
            from saga.store.database import prepare_threshold

            try:
                prepare_threshold(f"postgresql+psycopg://{rest}")
            except ValueError as exc:
                raise ValueError(f"{PREFIX}DATABASE_URL={redacted(url)!r}: {exc}") from None
        return f"postgresql+psycopg://{rest}"
    if dialect == "sqlite" and driver in ("", "pysqlite"):
        return url
    what = f"driver {driver!r}" if dialect in ("postgres", "postgresql") else f"database {scheme!r}"
    raise ValueError(f"{PREFIX}DATABASE_URL={redacted(url)!r}: {what} is not supported; "
                     f"{DATABASE_HELP}")


def check_urls(settings: Settings) -> None:
    """Refuse a broker, result backend or webhook URL that cannot work, naming the setting."""
    url = settings.broker_url
    if (_scheme(url) or "").lower() not in BROKER_SCHEMES:
        raise ValueError(f"{PREFIX}BROKER_URL={redacted(url)!r} is not a supported broker: "
                         f"{BROKER_HELP}")
    url = settings.result_backend
    if url and not _known_result_backend(_scheme(url)):
        raise ValueError(f"{PREFIX}RESULT_BACKEND={redacted(url)!r} is not a Celery result "
                         "backend: use the one the remote workers write to, e.g. "
                         "redis://host:6379/1 or rpc://")
    url = settings.alert_webhook
    if url and (_scheme(url) or "").lower() not in ("http", "https"):
        raise ValueError(f"{PREFIX}ALERT_WEBHOOK={redacted(url, path=False)!r} must be an "
                         "http:// or https:// URL")


def redacted(url: str, path: bool = True) -> str:
    """`url` safe to print or log: no password, no secret query values.

    With `path=False` (webhooks, whose path or query is often the secret) only the
    scheme and host are left.
    """
    scheme = _scheme(url)
    if scheme is None:
        return url if "@" not in url else "…@" + url.rpartition("@")[2]
    address, question, query = url[len(scheme) + 3:].partition("?")
    userinfo, at, where = address.rpartition("@")  # the last @: a password may hold one
    if not path:
        host = re.split(r"[/#]", where, maxsplit=1)[0]
        return f"{scheme}://{host}" + ("/…" if host != where or question else "")
    if at:
        user, colon, _ = userinfo.partition(":")
        where = f"{user}{':***' if colon else ''}@{where}"
    if question:
        where += "?" + "&".join(_redacted_pair(pair) for pair in query.split("&"))
    return f"{scheme}://{where}"


def _redacted_pair(pair: str) -> str:
    key, equals, _ = pair.partition("=")
    return f"{key}=***" if equals and _SECRET_KEY.search(key) else pair


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1) if match else None


def _known_result_backend(scheme: str | None) -> bool:
    from celery.app.backends import BACKEND_ALIASES

    return scheme is not None and scheme.lower().partition("+")[0] in BACKEND_ALIASES


def check_otel(mode: str) -> None:
    """Refuse SAGA_OTEL other than on/off, or on without OpenTelemetry installed."""
    if mode not in ("on", "off"):
        raise ValueError(f"{PREFIX}OTEL must be on or off, not {mode!r}")
    # find_spec imports nothing of the SDK itself: a disabled saga never loads it.
    if mode == "on" and importlib.util.find_spec("opentelemetry.sdk.trace") is None:
        raise ValueError(f"{PREFIX}OTEL=on needs OpenTelemetry: "
                         "pip install 'saga-orchestrator[otel]'")


def check_log_format(value: str) -> str:
    """SAGA_LOG_FORMAT as given, if it is one: text (for a person) or json (one object a line)."""
    if value not in LOG_FORMATS:
        raise ValueError(f"{PREFIX}LOG_FORMAT must be text or json, not {value!r}")
    return value


# -- the queue ----------------------------------------------------------------------------

QUEUE_MAX = 200  # RabbitMQ takes 255 bytes; room for Redis's priority suffixes
QUEUE_TYPES = ("classic", "quorum")


def check_queue(settings: Settings) -> None:
    """Refuse a queue name the broker would refuse, or two names for the one queue."""
    if settings.queue and settings.default_queue and settings.queue != settings.default_queue:
        raise ValueError(f"{PREFIX}QUEUE={settings.queue!r} and {PREFIX}DEFAULT_QUEUE="
                         f"{settings.default_queue!r} disagree: set only {PREFIX}QUEUE "
                         "(SAGA_DEFAULT_QUEUE is its older name)")
    if settings.queue_type not in QUEUE_TYPES:
        raise ValueError(f"{PREFIX}QUEUE_TYPE must be classic or quorum, not {settings.queue_type!r}")
    # Refused, not ignored: a deployment that asked for replicated queues must not run
    # believing it has them.
    if settings.queue_type == "quorum" and not settings.broker_url.startswith(("amqp", "pyamqp")):
        raise ValueError(f"{PREFIX}QUEUE_TYPE=quorum is a RabbitMQ queue type, and "
                         f"{PREFIX}BROKER_URL={redacted(settings.broker_url)!r} is not RabbitMQ "
                         "(Redis keeps a queue as durable as its own persistence, with no "
                         f"queue types): unset {PREFIX}QUEUE_TYPE or use an amqp:// broker")
    name = settings.explicit_queue
    variable = f"{PREFIX}QUEUE" if settings.queue else f"{PREFIX}DEFAULT_QUEUE"
    if name and (name != name.strip() or len(name) > QUEUE_MAX or name.startswith("amq.")):
        raise ValueError(f"{variable}={name!r} cannot name a queue: use at most {QUEUE_MAX} "
                         "characters, no surrounding spaces, not starting with 'amq.' "
                         "(RabbitMQ reserves it); or unset it for one queue per database")
