"""Throughput, latency and cost of a 5-step saga started through the API, against plain
Celery chains of 5 tasks on the same broker, per broker; then 1, 2, 4 workers.

    python bench/throughput.py [--sagas N] [--repeat R] [--latency-samples K]
                               [--brokers rabbitmq,redis] [--scaling on|off|only]

For each broker it starts, and keeps for every repeat: a real `saga api` (gunicorn) with a
real `saga worker -c 2` on the defaults a user gets; a plain chain's `celery worker -c 2`
on Celery's defaults (bench/plain_tasks.py); and one on the saga's Celery settings
(bench/baseline_tasks.py). Each repeat measures each in turn: a warm-up (its task events
counted on the broker, bench/taps.py), N runs started as fast as 4 client threads can
(throughput = N / (last end - first start); the saga's from the runs table), then runs one
at a time for the latency (K per kind over the repeats: from the API's 201 to the run's
finished_at; from apply_async's return to the chain's last task). Write transactions per
step come from the events' xmin, commits from pg_stat_database, published messages from
saga_messages_published_total, the CPU each kind of process used from /proc (the machine is
shared: "others" is everyone else's load). Then the scaling table: 1, 2, 4 worker
processes and threads, beside PostgreSQL's commit rate on as many connections. It prints
markdown tables (bench/report.py): medians over the repeats, ratios the medians of the
per-repeat ratios. bench/README.md says exactly what is measured and how.

    python bench/throughput.py --observability   # what task events, logs and metrics cost
    python bench/throughput.py --task-events     # task events off, on, on with Flower watching

A comparison measures the saga several ways in each repeat and broker, in rotating order
beside the chain on the saga's settings, on fresh processes each time, with the runs started
by this process through `engine.start` (no API): `--observability` with task events, metrics and INFO logs off
(SAGA_TASK_EVENTS=off, SAGA_METRICS=off, `--log-level WARNING`), then on as a user gets
them (INFO lines of every attempt to a file, the pool's metrics served on a
`--metrics-port`); `--task-events` with them off, on, and on with a `saga flower`
consuming them. The bench process starts the runs as the API would, with the same SAGA_*
settings and log level. Each figure is also given as a ratio to the "off" run of the same
repeat, with the median of those ratios; CPU ms per saga counts the worker, the bench
process, PostgreSQL and the broker (not Flower), worker ms per saga the worker alone (the
servers are shared with whoever else uses them); "load" is the 1-minute load average as
the batch ended.

Servers (override with environment variables): BENCH_DATABASE_URL (an admin database on
the PostgreSQL server; a fresh `bench_<random>` database is created and dropped),
BENCH_RABBITMQ_URL, BENCH_REDIS_URL (the Redis broker; also where chains report).
"""

from __future__ import annotations

import argparse
import atexit
import collections
import importlib
import json
import logging
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKERS = {
    "rabbitmq": os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
}
REPORT_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STEPS = 5
SAGA = "bench_five"
TERMINAL = ("succeeded", "compensated", "failed")
START_THREADS = 4
WARMUP = 20
SOLO = 20  # runs started one at a time after the batch: latency without a queue
# `make bench` in a few minutes on the shared 2-core machine, loaded or not: unless told a
# number of runs, a batch has as many as take about BATCH_S at the rate of the kind's
# previous batch (the first, of its warm-up), within MIN_BATCH..MAX_BATCH.
BATCH_S = 5.0
MIN_BATCH, MAX_BATCH = 40, 3000
SETUP_WARMUP = 10  # warm-up runs before each batch of kept processes (and the taps' sample)
READY_TIMEOUT_S = 60.0
T = TypeVar("T")


# -- processes --------------------------------------------------------------------------

class Worker:
    """A worker process in its own process group; `stop` kills the whole group."""

    live: list[Worker] = []

    def __init__(self, name: str, argv: list[str], env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.log = folder / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._file = open(self.log, "wb")
        self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self._file,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        Worker.live.append(self)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, marker: str = " ready.") -> None:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}")
            return marker in self.output()

        wait_for(ready, timeout, f"{self.name} to be ready", interval=0.1)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a warm shutdown), then SIGKILL, to the whole group; with `kill`, SIGKILL
        at once (a measured process with nothing left to finish: its graceful shutdown only
        costs the bench seconds)."""
        if self in Worker.live:
            Worker.live.remove(self)
        first = signal.SIGKILL if kill else signal.SIGTERM
        for sig, grace in ((first, 10.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.popen.pid, sig)  # the group: the main process and its children
            except ProcessLookupError:
                break
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                continue
            if sig is first:  # children may linger a moment after the parent
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        self._file.close()

    @classmethod
    def stop_all(cls) -> None:
        for worker in list(cls.live):
            worker.stop()


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def drain_deadline(n: int) -> float:
    """How long N sagas may take before the bench gives up: generous, never unbounded."""
    return 120.0 + n * 0.5


def delete_queue(broker_url: str, queue: str) -> None:
    """Remove the run's queue. On Redis, kombu's queue_delete from a fresh connection
    removes nothing (it only knows the bindings its own channel declared), so the keys
    are deleted by name: the list, its priority lists, the binding sets, and the unacked
    keys a saga worker keeps per queue (saga.tasks.namespace.redis_unacked_keys: a worker
    killed before its last ack leaves one there)."""
    try:
        if broker_url.startswith(("redis://", "rediss://")):
            client = redis.Redis.from_url(broker_url)
            try:
                client.delete(queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)),
                              f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}",
                              *(f"{queue}.{key}" for key in
                                ("unacked", "unacked_index", "unacked_mutex")))
            finally:
                client.close()
            return
        from kombu import Connection

        with Connection(broker_url, connect_timeout=3) as conn:
            conn.default_channel.queue_delete(queue)
            conn.default_channel.exchange_delete(queue)  # its direct exchange, named alike
    except Exception as exc:  # best effort: the queue is unique and should be empty
        print(f"  (could not delete queue {queue}: {exc})", file=sys.stderr)


def delete_exchanges(broker_url: str, names: Iterable[str]) -> None:
    """Remove exchanges the bench made (its event and remote-control exchanges), once
    nothing publishes to them: RabbitMQ's, or on Redis their binding sets."""
    names = list(names)
    try:
        if broker_url.startswith(("redis://", "rediss://")):
            client = redis.Redis.from_url(broker_url)
            try:
                client.delete(*(f"_kombu.binding.{name}" for name in names))
            finally:
                client.close()
            return
        from kombu import Connection

        with Connection(broker_url, connect_timeout=3) as conn:
            for name in names:
                conn.default_channel.exchange_delete(name)
    except Exception as exc:  # best effort, as delete_queue
        print(f"  (could not delete exchanges {names}: {exc})", file=sys.stderr)


# -- the database -----------------------------------------------------------------------

class Database:
    """A fresh `bench_<random>` database, migrated; dropped by `drop`."""

    def __init__(self) -> None:
        from saga import migrations

        self.name = f"bench_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        self.url = sa.make_url(ADMIN_URL).set(database=self.name).render_as_string(
            hide_password=False)
        engine = sa.create_engine(self.url)
        migrations.upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE bench_commit (id bigserial PRIMARY KEY, v int)")
        engine.dispose()

    @property
    def libpq(self) -> str:
        """The URL for psycopg itself (no SQLAlchemy driver suffix)."""
        return self.url.replace("+psycopg", "", 1)

    def counters(self) -> tuple[int, int]:
        """(xact_commit, xact_rollback) of the bench database, read from the admin one."""
        with self.admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
            row = conn.exec_driver_sql(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.name,)).one()
        return int(row[0]), int(row[1])

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Until no other session uses the bench database: their stats are flushed on exit."""
        def idle() -> bool:
            with self.admin.connect() as conn:
                return conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                    (self.name,)).scalar_one() == 0

        wait_for(idle, timeout, "the bench database's sessions to close", interval=0.1)
        time.sleep(0.3)  # a closing backend reports its counters as it exits

    def drop(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()


def commit_rate(db: Database, seconds: float = 3.0, connections: int = 1) -> float:
    """Single-row INSERT + COMMIT transactions per second over `connections` sessions."""
    counts = [0] * connections
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        with psycopg.connect(db.libpq) as conn:
            while time.monotonic() < stop:
                conn.execute("INSERT INTO bench_commit (v) VALUES (%s)", (index,))
                conn.commit()
                counts[index] += 1

    began = time.monotonic()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 30)
    elapsed = time.monotonic() - began
    with psycopg.connect(db.libpq, autocommit=True) as conn:
        conn.execute("TRUNCATE bench_commit")
    return sum(counts) / elapsed


# -- where the CPU went ------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def processes() -> dict[int, tuple[str, int, float]]:
    """pid -> (name, process group, CPU seconds) for every process we can read."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        out[int(entry)] = (name, int(fields[2]), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def machine_cpu() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / TICK, iowait / TICK


def _postgres_aux(pid: int) -> bool:
    """The postmaster and its helpers (shared by everyone), not a session's backend."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "postgres:" not in title or any(
        w in title for w in ("walwriter", "checkpointer", "background writer", "autovacuum",
                             "stats", "logical replication"))


WORKER_CPU = "worker (its process group)"
BENCH_CPU = "bench process (starts runs, polls)"
OTHERS_CPU = "others (the rest of the machine)"


class CpuMeter:
    """CPU seconds by kind of process between "begin" and "end" of the measured batch.

    "others" is the machine's busy time minus every process we can name: other people's
    work on this shared machine, including processes that came and went meanwhile.
    """

    def __init__(self, db: Database | None = None) -> None:
        self.db = db
        self.began: dict[int, tuple[str, int, float]] = {}
        self.machine = (0.0, 0.0)
        self.wall = 0.0
        self.by_kind: dict[str, float] = {}
        self.bench_pids: set[int] = set()
        self.load = 0.0  # the machine's 1-minute load average as the batch ended
        self.groups: dict[int, str] = {}  # more process groups to name: pgid -> kind
        # The broker measured: the other one's CPU is someone else's (shared servers).
        self.broker: str | None = None

    def _backends(self) -> set[int]:
        if self.db is None:
            return set()
        with self.db.admin.connect() as conn:
            return set(conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db.name,)).scalars())

    def __call__(self, phase: str, worker: Worker) -> None:
        if phase == "begin":
            self.bench_pids = self._backends()
            self.began, self.machine, self.wall = processes(), machine_cpu(), time.monotonic()
            return
        now = processes()
        busy, iowait = machine_cpu()
        self.wall = time.monotonic() - self.wall
        self.load = os.getloadavg()[0]
        self.bench_pids |= self._backends()  # backends opened during the batch count too
        totals: dict[str, float] = collections.defaultdict(float)
        for pid, (name, group, cpu) in now.items():
            spent = cpu - (self.began[pid][2] if pid in self.began else 0.0)
            if pid == os.getpid():
                kind = BENCH_CPU
            elif group == worker.popen.pid:
                kind = WORKER_CPU
            elif group in self.groups:
                kind = self.groups[group]
            elif name == "postgres" and pid in self.bench_pids:
                kind = "postgres backends of the bench db"
            elif name == "postgres" and _postgres_aux(pid):
                kind = "postgres walwriter/checkpointer/..."
            elif "beam" in name or name.startswith(("erl_", "epmd")):
                if self.broker not in (None, "rabbitmq"):
                    continue
                kind = "rabbitmq"
            elif name.startswith("redis-server"):
                kind = "redis-server"
            else:
                continue
            totals[kind] += spent
        busy -= self.machine[0]
        totals[OTHERS_CPU] = max(0.0, busy - sum(totals.values()))
        totals["iowait (idle, waiting for disk)"] = iowait - self.machine[1]
        self.by_kind = dict(totals)

    @property
    def ours(self) -> float:
        """Cores busy with the bench (everything but others and iowait)."""
        skip = ("others", "iowait")
        return sum(v for k, v in self.by_kind.items() if not k.startswith(skip)) / max(self.wall, 1e-9)

    @property
    def cpu_s(self) -> float:
        """CPU seconds of the bench (everything but others and iowait) in the batch."""
        return self.ours * self.wall

    @property
    def others(self) -> float:
        return self.by_kind.get(OTHERS_CPU, 0.0) / max(self.wall, 1e-9)

    def report(self, label: str, n: int) -> None:
        print(f"\n  CPU during the measured batch of {label} ({self.wall:.1f}s wall, "
              f"{CORES * self.wall:.1f} core-seconds available):")
        for kind, spent in sorted(self.by_kind.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<40} {spent:6.2f}s  {100 * spent / (CORES * self.wall):5.1f}%  "
                  f"{1000 * spent / (n * STEPS):6.2f} ms/step")


# -- one measurement ----------------------------------------------------------------------

def batch_size(rate: float, seconds: float) -> int:
    """Runs that take about `seconds` at `rate` per second, within MIN_BATCH..MAX_BATCH."""
    return max(MIN_BATCH, min(MAX_BATCH, round(rate * seconds)))


@dataclass
class Result:
    rate: float  # completed per second: N / (last end - first start)
    p50: float  # seconds, end-to-end, in the batch (queueing included)
    p99: float
    submit_s: float  # how long the bench took to start all N
    commits_per_step: float | None = None
    rollbacks_per_step: float | None = None
    writes_per_step: float | None = None  # transactions that wrote (distinct xmin of events)
    failed: int = 0
    ours: float = 0.0  # cores busy with the bench during the batch
    others: float = 0.0  # cores busy with other people's work meanwhile
    # Runs started one at a time, each after the previous finished (no queue), in seconds:
    # from the start being accepted (the API's 201 received; apply_async returned) to the end
    # (the run's finished_at; the chain's last task), and from the request being sent.
    solo: list[float] = field(default_factory=list)
    solo_sent: list[float] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU seconds the bench's processes spent on the batch
    worker_cpu_s: float = 0.0  # of which the worker's (PostgreSQL and the broker are shared)
    load: float = 0.0  # the machine's 1-minute load average as the batch ended
    cpu_by_kind: dict[str, float] = field(default_factory=dict)  # CPU seconds in the batch
    window_s: float = 0.0  # the batch: first start to last end
    cpu_wall_s: float = 0.0  # the CPU meter's window: the batch as the bench saw it
    writes: int = 0  # write transactions of the batch's runs
    # Task events the broker carried (bench/taps.py) over `tapped_steps` steps, by routing key.
    tapped: dict[str, int] | None = None
    tapped_steps: int = 0
    # saga_messages_published_total per series (the worker's and the API's scrapes summed)
    # over `published_steps` steps; None when no scrape has it.
    published: dict[str, float] | None = None
    published_steps: int = 0
    took_s: float = 0.0  # the whole measurement, processes started and stopped
    n: int = 0  # runs in the batch

    @property
    def solo_p50(self) -> float:
        return percentile(self.solo, 0.5) if self.solo else float("nan")


@dataclass
class Row:
    saga: list[Result] = field(default_factory=list)
    chain: list[Result] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def summarize(spans: list[tuple[float, float]], submit_s: float) -> Result:
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    latencies = [e - s for s, e in spans]
    return Result(rate=len(spans) / (last - first), p50=percentile(latencies, 0.50),
                  p99=percentile(latencies, 0.99), submit_s=submit_s, window_s=last - first,
                  n=len(spans))


def in_threads(n: int, work: Callable[[int], T]) -> tuple[list[T], float]:
    """Call work(i) for i in range(n) from START_THREADS threads; (results, seconds taken)."""
    out: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(indices: Iterable[int]) -> None:
        try:
            for i in indices:
                out[i] = work(i)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(range(k, n, START_THREADS),))
               for k in range(START_THREADS)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(drain_deadline(n))
    taken = time.perf_counter() - began
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError("starting the runs did not finish in time")
    return out, taken


Hook = Callable[[str, "Worker"], None]  # called with "begin" and "end" around the measured batch


class RunPoller:
    """The bench's reads of the runs table, on one autocommit connection; `polls` counts its
    statements (each one a commit in pg_stat_database, subtracted from the saga's)."""

    def __init__(self, db: Database, broker: str) -> None:
        self.conn = psycopg.connect(db.libpq, autocommit=True)
        self.broker = broker
        self.polls = 0

    def query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        self.polls += 1
        return self.conn.execute(sql, params).fetchall()

    def wait_done(self, ids: list[str]) -> None:
        def done() -> bool:
            finished = self.query("SELECT count(*) FROM runs WHERE id = ANY(%s) AND status = ANY(%s)",
                                  (ids, list(TERMINAL)))[0][0]
            return finished == len(ids)

        wait_for(done, drain_deadline(len(ids)), f"{len(ids)} sagas to finish on {self.broker}",
                 interval=0.1)

    def wait_one(self, run_id: str) -> None:
        # finished_at is the database's clock: how soon the bench notices changes nothing.
        wait_for(lambda: self.query("SELECT finished_at IS NOT NULL FROM runs WHERE id = %s",
                                    (run_id,))[0][0], 30, "one saga to finish", interval=0.01)

    def spans(self, ids: list[str]) -> list[tuple[float, float, str]]:
        """(created_at, finished_at, status) of each run, as epoch seconds."""
        return [(r[0], r[1], r[2]) for r in self.query(
            "SELECT extract(epoch FROM created_at)::float8, extract(epoch FROM finished_at)::float8,"
            " status FROM runs WHERE id = ANY(%s)", (ids,))]

    def finished(self, ids: list[str]) -> dict[str, float]:
        return {r[0]: r[1] for r in self.query(
            "SELECT id, extract(epoch FROM finished_at)::float8 FROM runs WHERE id = ANY(%s)",
            (ids,))}

    def writes(self, ids: list[str]) -> int:
        # Every write transaction of the protocol appends an event and events are never
        # updated, so their distinct xmin count is the number of write transactions.
        return int(self.query("SELECT count(DISTINCT xmin::text) FROM events WHERE run_id = ANY(%s)",
                              (ids,))[0][0])

    def close(self) -> None:
        self.conn.close()


def finish_result(result: Result, meter: CpuMeter) -> None:
    result.ours, result.others = meter.ours, meter.others
    result.cpu_s, result.load = meter.cpu_s, meter.load
    result.worker_cpu_s = meter.by_kind.get(WORKER_CPU, 0.0)
    result.cpu_by_kind = dict(meter.by_kind)
    result.cpu_wall_s = meter.wall


def measure_saga(db: Database, broker: str, n: int, folder: Path, module: str = "saga.cli",
                 extra_env: dict[str, str] | None = None, hook: Hook | None = None,
                 log_level: str = "INFO", worker_args: Sequence[str] = ()) -> Result:
    """N sagas through a real `saga.cli worker -c 2` (or `module`, the same CLI with timers),
    started by this process with `engine.start`, as the API would (the comparisons'
    and bench/profile_saga.py's way: no API process to share the CPU with).

    `extra_env` goes to the worker and its SAGA_* settings also to the bench's own parts,
    which start the runs; `log_level` is the worker's `--log-level`, `worker_args` follow
    `worker -c 2`.
    """
    from saga.settings import Settings
    from saga.system import build

    broker_url = BROKERS[broker]
    queue = f"bench-saga-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": db.url,
           "SAGA_BROKER_URL": broker_url, "SAGA_SAGAS": "bench.sagas",
           "SAGA_QUEUE": queue, **(extra_env or {})}
    settings = Settings.from_env(extra_env or {}, database_url=db.url, broker_url=broker_url,
                                 sagas=("bench.sagas",), queue=queue)
    worker = Worker(f"saga-{broker}", [sys.executable, "-m", module, "--log-level", log_level,
                                       "worker", "-c", "2", *worker_args], env, folder)
    system = None
    meter = CpuMeter(db)
    meter.broker = broker
    poll: RunPoller | None = None
    began = time.monotonic()
    try:
        # Above INFO, Celery's "ready." line is not logged: wait for its banner instead (the
        # warm-up then waits for the consumer; publishing declares the queue).
        worker.wait_ready(marker=" ready." if log_level in ("DEBUG", "INFO") else "[tasks]")
        system = build(settings)
        engine = system.engine
        if system.dispatcher.namespace.id is not None:
            SagaSetup.deployments.add((broker_url, system.dispatcher.namespace.id))
        poll = RunPoller(db, broker)
        before = db.counters()
        warm, _ = in_threads(WARMUP, lambda _i: engine.start(SAGA, {})[0])
        poll.wait_done(warm)
        meter("begin", worker)
        if hook:
            hook("begin", worker)
        ids, submit_s = in_threads(n, lambda _i: engine.start(SAGA, {})[0])
        poll.wait_done(ids)
        meter("end", worker)
        if hook:
            hook("end", worker)
        rows = poll.spans(ids)
        writes = poll.writes(ids)
        solo: list[tuple[str, float]] = []
        for _ in range(SOLO):
            run_id = engine.start(SAGA, {})[0]
            solo.append((run_id, time.time()))
            poll.wait_one(run_id)
        solo_spans = {r[0]: r[1] for r in poll.query(
            "SELECT id, extract(epoch FROM finished_at - created_at)::float8 FROM runs"
            " WHERE id = ANY(%s)", ([i for i, _ in solo],))}
    finally:
        if poll is not None:
            poll.close()
        worker.stop(kill=True)
        if system is not None:
            system.store.close()  # broker connections stay in kombu's shared pool
        delete_queue(broker_url, queue)
    db.wait_idle()
    after = db.counters()
    result = summarize([(r[0], r[1]) for r in rows], submit_s)
    step_count = (WARMUP + n + SOLO) * STEPS
    result.commits_per_step = (after[0] - before[0] - poll.polls) / step_count
    result.rollbacks_per_step = (after[1] - before[1]) / step_count
    result.writes, result.writes_per_step = writes, writes / (n * STEPS)
    result.failed = sum(1 for r in rows if r[2] != "succeeded")
    finish_result(result, meter)
    result.solo = [solo_spans[i] for i, _ in solo]  # created_at -> finished_at
    result.took_s = time.monotonic() - began
    return result


# -- the saga as a user runs it: started through `saga api` ---------------------------------

# Starts are rate-limited per token (SAGA_RATE_LIMIT, 200/s and 5000/min by default). The
# bench keeps the limiter and its storage, only out of the way: the same two windows, higher.
UNTHROTTLED = "100000/second;6000000/minute"


class ApiClient:
    """POST /v1/sagas/bench_five/runs with an Idempotency-Key; one requests.Session per thread."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.url = f"{api.url}/v1/sagas/{SAGA}/runs"
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            self._sessions.append(session)
        return session

    def start(self) -> tuple[str, float, float]:
        """(run id, time the request was sent, time its 201 was received)."""
        headers = self.api.headers(idempotency_key=f"bench-{uuid.uuid4().hex}")
        sent = time.time()
        response = self._session().post(self.url, json={"input": {}}, headers=headers, timeout=30)
        received = time.time()
        if response.status_code != 201:
            raise RuntimeError(f"POST {self.url}: {response.status_code} {response.text[:500]}")
        return response.headers["Location"].rsplit("/", 1)[-1], sent, received

    def close(self) -> None:
        for session in self._sessions:
            session.close()


PUBLISHED = ("saga_messages_published_total", "saga_task_event_messages_total")


def scrape_published(urls: Sequence[tuple[str, dict[str, str]]]) -> dict[str, float] | None:
    """The saga's own counts of what it published (PUBLISHED: step messages, its task-event
    messages) by series, `name{labels}`, summed over the endpoints; None if none has them
    (not in this version)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for url, headers in urls:
        text = requests.get(url, headers=headers, timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in PUBLISHED:
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    series = f"{sample.name}{{{labels}}}"
                    found[series] = found.get(series, 0.0) + sample.value
    return found or None


API_CPU = "api (gunicorn: arbiter + workers)"
IDLE_CPU = "the other kinds' idle processes"


class SagaSetup:
    """A real `saga api` (gunicorn, its default workers and threads) and a real `saga worker`
    on one queue of the bench database, kept for every repeat on one broker.

    The worker runs with the defaults a user gets (prefork, task events on, INFO logs,
    metrics counted) and its metrics served on a port. Runs are started by POST
    /v1/sagas/bench_five/runs with an Idempotency-Key, from START_THREADS client threads.
    """

    kind = "saga"
    # (broker URL, deployment id) of every setup: their exchanges go once all have stopped.
    deployments: set[tuple[str, str]] = set()

    def __init__(self, db: Database, broker: str, folder: Path) -> None:
        self.db, self.broker, self.folder = db, broker, folder
        self.broker_url = BROKERS[broker]
        self.queue = f"bench-saga-{uuid.uuid4().hex[:8]}"
        self.saga_env = {"SAGA_SAGAS": "bench.sagas", "SAGA_QUEUE": self.queue,
                         "SAGA_RATE_LIMIT": UNTHROTTLED}
        self.api: Any = None
        self.worker: Worker | None = None
        self.client: ApiClient | None = None
        self.poll: RunPoller | None = None
        self.metrics_port = 0
        self.events = ""  # the deployment's event exchange
        self.steps = 0  # saga steps started so far: the denominator of the session's figures
        self.before = (0, 0)

    def spawn(self, concurrency: int = 2, pool: str = "prefork") -> None:
        """Start both processes; `ready` waits for them."""
        from bench.api_server import ApiServer

        self.db.wait_idle()  # nothing else on the bench database: its counters are exact
        self.before = self.db.counters()
        self._spawn_worker(concurrency, pool)
        self.api = ApiServer(self.db.url, self.broker_url, self.folder, env=self.saga_env)

    def _spawn_worker(self, concurrency: int, pool: str) -> None:
        from tests.stack import free_port

        self.metrics_port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": self.db.url,
               "SAGA_BROKER_URL": self.broker_url, **self.saga_env}
        argv = [sys.executable, "-m", "saga.cli", "worker", "-c", str(concurrency),
                "--pool", pool, "--metrics-port", str(self.metrics_port)]
        self.worker = Worker(f"saga-{self.broker}-{pool}{concurrency}", argv, env, self.folder)

    def ready(self) -> None:
        assert self.worker is not None
        self.api.__enter__()
        self._worker_ready()
        self.client = ApiClient(self.api)
        self.poll = RunPoller(self.db, self.broker)

    def _worker_ready(self) -> None:
        assert self.worker is not None
        self.worker.wait_ready()
        found = re.search(r"deployment (\S+), queue", self.worker.output())
        if not found:
            raise RuntimeError(f"the worker named no deployment:\n{self.worker.output()[-2000:]}")
        self.events = exchanges_for(found.group(1))["event_exchange"]
        SagaSetup.deployments.add((self.broker_url, found.group(1)))

    def replace_worker(self, concurrency: int, pool: str) -> None:
        """Another worker on the same queue (every run finished: nothing is in flight)."""
        assert self.worker is not None
        self.worker.stop(kill=True)
        remove_metrics_folders(self.worker)
        self._spawn_worker(concurrency, pool)
        self._worker_ready()

    def groups(self) -> dict[int, str]:
        assert self.worker is not None and self.api.process is not None
        return {self.worker.popen.pid: WORKER_CPU, self.api.process.popen.pid: API_CPU}

    def measure(self, n: int | None, solo: int, *, tap: bool = True,
                warmup: int = SETUP_WARMUP, idle: Iterable[int] = (),
                batch_s: float = BATCH_S) -> Result:
        """`warmup` runs (their task events counted on the broker with `tap`), N runs as fast
        as the client threads start them (the measured batch; None: batch_size at the
        warm-up's rate), then `solo` one at a time. `idle`: the process groups of the other
        kinds, named in the CPU figures."""
        from bench.taps import Tap

        assert self.worker is not None and self.client is not None and self.poll is not None
        client, poll = self.client, self.poll
        began = time.monotonic()
        tapped: dict[str, int] | None = None
        if tap:
            with Tap(self.broker_url, self.events) as taps:
                warm, _ = in_threads(warmup, lambda _i: client.start()[0])
                poll.wait_done(warm)
                warm_s = time.monotonic() - began
                tapped = taps.settled()
        else:
            warm, _ = in_threads(warmup, lambda _i: client.start()[0])
            poll.wait_done(warm)
            warm_s = time.monotonic() - began
        if n is None:
            n = batch_size(warmup / warm_s, batch_s)
        meter = CpuMeter(self.db)
        meter.groups = {**{pgid: IDLE_CPU for pgid in idle}, **self.groups()}
        meter.broker = self.broker
        meter("begin", self.worker)
        started, submit_s = in_threads(n, lambda _i: client.start())
        ids = [run_id for run_id, _, _ in started]
        poll.wait_done(ids)
        meter("end", self.worker)
        rows = poll.spans(ids)
        writes = poll.writes(ids)
        alone = []
        for _ in range(solo):
            alone.append(client.start())
            poll.wait_one(alone[-1][0])
        finished = poll.finished([run_id for run_id, _, _ in alone])
        self.steps += (warmup + n + solo) * STEPS
        result = summarize([(r[0], r[1]) for r in rows], submit_s)
        result.writes, result.writes_per_step = writes, writes / (n * STEPS)
        result.failed = sum(1 for r in rows if r[2] != "succeeded")
        finish_result(result, meter)
        result.solo = [finished[run_id] - received for run_id, _, received in alone]
        result.solo_sent = [finished[run_id] - sent for run_id, sent, _ in alone]
        result.tapped, result.tapped_steps = tapped, warmup * STEPS
        result.took_s = time.monotonic() - began
        return result

    @classmethod
    def delete_exchanges(cls) -> None:
        """The deployments' event and remote-control exchanges, once every process stopped."""
        for broker_url, deployment in cls.deployments:
            names = exchanges_for(deployment)
            delete_exchanges(broker_url, [names["event_exchange"],
                                          f"{names['control_exchange']}.pidbox"])
        cls.deployments.clear()

    def close(self) -> Session:
        """Stop both (killed: nothing is left to finish), delete the queue; what the whole
        session cost per step: commits, rollbacks (pg_stat_database, once every session
        closed) and the app's published-messages counter (scraped first)."""
        published = None
        try:
            if self.api is not None and self.api.process is not None and self.worker is not None:
                published = scrape_published([
                    (f"http://127.0.0.1:{self.metrics_port}/metrics", {}),
                    (f"{self.api.url}/metrics", {"Authorization": f"Bearer {self.api.token}"})])
        except requests.RequestException as exc:  # the figures say n/a; the rest stands
            print(f"  (could not scrape the saga's metrics: {exc})", file=sys.stderr)
        finally:
            if self.client is not None:
                self.client.close()
            if self.poll is not None:
                self.poll.close()
            if self.api is not None:
                process = self.api.process
                self.api.stop(kill=True)
                if process is not None:
                    remove_metrics_folders(process)
            if self.worker is not None:
                self.worker.stop(kill=True)
                remove_metrics_folders(self.worker)
            delete_queue(self.broker_url, self.queue)
        self.db.wait_idle()
        after = self.db.counters()
        polls = self.poll.polls if self.poll is not None else 0
        steps = max(self.steps, 1)
        return Session(commits_per_step=(after[0] - self.before[0] - polls) / steps,
                       rollbacks_per_step=(after[1] - self.before[1]) / steps,
                       published=published, steps=self.steps)


def remove_metrics_folders(process: Worker) -> None:
    """The prometheus multiprocess folder of a killed `saga` command (its exit hook did not
    run; the next saga process would sweep it, saga.observe.multiprocess)."""
    from saga.observe.multiprocess import PREFIX

    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}{process.popen.pid}-*"):
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Session:
    """One broker's saga processes, over every repeat: what they cost per step."""

    commits_per_step: float
    rollbacks_per_step: float
    published: dict[str, float] | None  # saga_messages_published_total by series
    steps: int


def measure_api_saga(db: Database, broker: str, n: int, folder: Path, *, solo: int,
                     concurrency: int = 2, pool: str = "prefork", tap: bool = True,
                     warmup: int = WARMUP) -> Result:
    """One measurement on fresh processes (SagaSetup), with the session's costs in it."""
    setup = SagaSetup(db, broker, folder)
    try:
        setup.spawn(concurrency, pool)
        setup.ready()
        result = setup.measure(n, solo, tap=tap, warmup=warmup)
    finally:
        session = setup.close()
    result.commits_per_step = session.commits_per_step
    result.rollbacks_per_step = session.rollbacks_per_step
    result.published, result.published_steps = session.published, session.steps
    return result


def exchanges_for(deployment_id: str) -> dict[str, str]:
    from saga.tasks.namespace import exchanges_for as names

    return names(deployment_id)


CHAINS = {  # kind -> (Celery app module, what it is)
    "chain": ("bench.baseline_tasks", "the saga's delivery settings"),
    "plain": ("bench.plain_tasks", "Celery's defaults"),
}


class ChainSetup:
    """A real `celery -A <module> worker -c 2` (prefork) and the app that starts chains of 5
    no-op tasks, kept for every repeat on one broker. `kind` "chain": bench.baseline_tasks,
    the saga's own Celery settings; "plain": bench.plain_tasks, Celery's defaults."""

    def __init__(self, broker: str, kind: str, folder: Path) -> None:
        self.broker, self.kind, self.folder = broker, kind, folder
        self.broker_url = BROKERS[broker]
        self.queue = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
        self.key = f"bench:chain:{uuid.uuid4().hex[:8]}"
        self.module = CHAINS[kind][0]
        self.worker: Worker | None = None
        self.reports = redis.Redis.from_url(REPORT_REDIS_URL)
        self.app: Any = None

    def spawn(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_BROKER_URL": self.broker_url,
               "BENCH_QUEUE": self.queue, "BENCH_REDIS_URL": REPORT_REDIS_URL,
               "BENCH_RESULTS_KEY": self.key}
        # Gossip and mingle off, as `saga worker` has them: on a shared broker they would
        # talk with everyone else's workers. The plain app consumes its task_default_queue.
        argv = [sys.executable, "-m", "celery", "-A", self.module, "worker", "-c", "2",
                "--pool", "prefork", "--without-gossip", "--without-mingle", "--loglevel=INFO",
                f"--hostname=bench-{self.kind}-{os.getpid()}@%h"]
        if self.kind == "chain":
            argv.append(f"--queues={self.queue}")
        self.worker = Worker(f"{self.kind}-{self.broker}", argv, env, self.folder)
        make_app = importlib.import_module(self.module).make_app
        self.app = make_app(self.broker_url, self.queue, REPORT_REDIS_URL, self.key)

    def ready(self) -> None:
        assert self.worker is not None
        self.worker.wait_ready()

    def groups(self) -> dict[int, str]:
        assert self.worker is not None
        return {self.worker.popen.pid: WORKER_CPU}

    def _wait_done(self, count: int) -> None:
        wait_for(partial(finished_chains, self.reports, self.key, count), drain_deadline(count),
                 f"{count} chains to finish on {self.broker}", interval=0.1)

    def measure(self, n: int | None, solo: int, *, tap: bool = True,
                warmup: int = SETUP_WARMUP, idle: Iterable[int] = (),
                hook: Hook | None = None, batch_s: float = BATCH_S) -> Result:
        """As SagaSetup.measure; with `tap`, the warm-up's task events are counted on the
        broker (the plain chain sends none)."""
        from bench.baseline_tasks import LENGTH, start_chain
        from bench.taps import Tap

        assert LENGTH == STEPS and self.worker is not None
        app, reports, key = self.app, self.reports, self.key
        began = time.monotonic()
        tapped: dict[str, int] | None = None
        reports.delete(key)
        if tap and app.conf.worker_send_task_events:
            with Tap(self.broker_url, app.conf.event_exchange) as taps:
                in_threads(warmup, lambda _i: start_chain(app))
                self._wait_done(warmup)
                warm_s = time.monotonic() - began
                tapped = taps.settled()
        else:
            in_threads(warmup, lambda _i: start_chain(app))
            self._wait_done(warmup)
            warm_s = time.monotonic() - began
        if n is None:
            n = batch_size(warmup / warm_s, batch_s)
        reports.delete(key)
        meter = CpuMeter()
        meter.groups = {pgid: IDLE_CPU for pgid in idle}
        meter.broker = self.broker
        meter("begin", self.worker)
        if hook:
            hook("begin", self.worker)
        _, submit_s = in_threads(n, lambda _i: start_chain(app))
        self._wait_done(n)
        meter("end", self.worker)
        if hook:
            hook("end", self.worker)
        spans = [tuple(json.loads(raw)) for raw in reports.lrange(key, 0, -1)]
        reports.delete(key)
        alone = []
        for i in range(solo):
            sent = time.time()
            alone.append((sent, start_chain(app)))
            wait_for(partial(finished_chains, reports, key, i + 1), 30, "one chain to finish",
                     interval=0.01)
        ends = [json.loads(raw)[1] for raw in reports.lrange(key, 0, -1)]
        reports.delete(key)
        result = summarize(spans, submit_s)
        finish_result(result, meter)
        result.solo = [end - returned for (_, returned), end in zip(alone, ends, strict=True)]
        result.solo_sent = [end - sent for (sent, _), end in zip(alone, ends, strict=True)]
        result.tapped, result.tapped_steps = tapped, warmup * STEPS
        result.took_s = time.monotonic() - began
        return result

    def close(self) -> None:
        try:
            if self.worker is not None:
                self.worker.stop(kill=True)
        finally:
            self.reports.delete(self.key)
            self.reports.close()
            delete_queue(self.broker_url, self.queue)
            if self.app is not None and self.app.conf.worker_send_task_events:
                delete_exchanges(self.broker_url, [self.app.conf.event_exchange])


def finished_chains(reports: redis.Redis, key: str, count: int) -> bool:
    return int(reports.llen(key)) >= count


def measure_chain(broker: str, n: int, folder: Path, hook: Hook | None = None, *,
                  kind: str = "chain", solo: int = SOLO, tap: bool = False) -> Result:
    """N chains through a fresh ChainSetup (`kind` "chain": the saga's Celery settings)."""
    setup = ChainSetup(broker, kind, folder)
    try:
        setup.spawn()
        setup.ready()
        return setup.measure(n, solo, tap=tap, warmup=WARMUP, hook=hook)
    finally:
        setup.close()


# -- many workers: where PostgreSQL becomes the limit ---------------------------------------

@dataclass
class Scaled:
    pool: str
    concurrency: int
    result: Result


def measure_scaling(db: Database, broker: str, n: int | None, folder: Path,
                    counts: Sequence[int], batch_s: float = BATCH_S) -> list[Scaled]:
    """The API-started saga with 1, 2, 4... worker processes (prefork) and threads, the two
    pools of one size measured one after the other: one API, one queue, a new worker for
    each."""
    out: list[Scaled] = []
    setup = SagaSetup(db, broker, folder)
    try:
        for c in counts:
            for pool in ("prefork", "threads"):
                if setup.worker is None:
                    setup.spawn(c, pool)
                    setup.ready()
                else:
                    setup.replace_worker(c, pool)
                # The previous configuration's rate, doubled: this one may be faster.
                size = n or (batch_size(2 * out[-1].result.rate, batch_s) if out else None)
                result = setup.measure(size, 0, tap=False, warmup=max(10, 5 * c),
                                       batch_s=batch_s)
                out.append(Scaled(pool, c, result))
                print(f"  {broker} {pool} -c {c}: {result.n} runs, {result.rate:.1f} sagas/s, "
                      f"{result.writes / result.window_s:.0f} write tx/s, worker "
                      f"{result.worker_cpu_s / result.cpu_wall_s:.2f} cores, others "
                      f"{result.others:.2f} (took {result.took_s:.0f}s)", flush=True)
    finally:
        setup.close()
    return out


# -- comparisons: the saga measured several ways in one run --------------------------------

@dataclass(frozen=True)
class Variant:
    """One way to run the saga's processes, measured beside the others in each repeat."""

    name: str
    env: dict[str, str]  # SAGA_* of the worker and of the bench, which starts the runs
    log_level: str = "INFO"  # the worker's `--log-level`; the bench's saga loggers too
    metrics_port: bool = False  # the worker serves its pool's metrics (multiprocess mode)
    flower: bool = False  # a `saga flower` consumes the task events meanwhile


COMPARISONS = {
    # Everything a user can switch off, against the defaults with the metrics served.
    "observability": (
        Variant("off", {"SAGA_TASK_EVENTS": "off", "SAGA_METRICS": "off"}, log_level="WARNING"),
        Variant("on", {"SAGA_TASK_EVENTS": "on", "SAGA_METRICS": "on"}, metrics_port=True)),
    # Task events alone: off, on with nobody listening (the default), on with Flower watching.
    "task-events": (
        Variant("off", {"SAGA_TASK_EVENTS": "off"}),
        Variant("on", {"SAGA_TASK_EVENTS": "on"}),
        Variant("on + flower", {"SAGA_TASK_EVENTS": "on"}, flower=True)),
}
DEFAULTS = "on"  # the variant a user gets: the saga row of the saga-against-chain table
FLOWER_LOGIN = ("bench", "bench-only")


def measure_variant(db: Database, broker: str, n: int, folder: Path, variant: Variant) -> Result:
    """`measure_saga` run as `variant` says; after the batch, checks it did what it says."""
    from tests.stack import free_port

    port = free_port() if variant.metrics_port else 0
    attempts = (WARMUP + n) * STEPS

    def check(phase: str, worker: Worker) -> None:
        if phase != "end":
            return
        out = worker.output()
        events = "ON" if variant.env.get("SAGA_TASK_EVENTS", "on") == "on" else "OFF"
        logged = out.count(" step.succeeded in ")
        wanted = logged >= attempts if variant.log_level in ("DEBUG", "INFO") else logged == 0
        if f"task events: {events}" not in out or not wanted:
            raise RuntimeError(f"{variant.name}: the worker's task events are not {events} or "
                               f"it logged {logged} step.succeeded lines for {attempts} attempts")
        if port:
            served = metric_sum(f"http://127.0.0.1:{port}/metrics", "saga_step_attempts_total")
            if served < attempts:
                raise RuntimeError(f"{variant.name}: the worker's metrics count {served} "
                                   f"attempts, not {attempts}")

    watcher = flower(db, broker, folder) if variant.flower else None
    try:
        with bench_logs(variant.log_level, folder):
            return measure_saga(db, broker, n, folder, extra_env=variant.env, hook=check,
                                log_level=variant.log_level,
                                worker_args=["--metrics-port", str(port)] if port else [])
    finally:
        if watcher is not None:
            os.killpg(watcher.pid, signal.SIGTERM)
            watcher.wait(10)


def metric_sum(url: str, name: str) -> float:
    """The sum of every series of counter `name` in the Prometheus text at `url`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(url, timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


@contextmanager
def bench_logs(level: str, folder: Path) -> Iterator[None]:
    """The bench starts runs as the API would: its `saga.*` lines at `level`, to a file."""
    from saga.observe.logsetup import TextFormatter

    logger = logging.getLogger("saga")
    handler = logging.FileHandler(folder / f"bench-{uuid.uuid4().hex[:6]}.log")
    handler.setFormatter(TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        handler.close()


def flower(db: Database, broker: str, folder: Path) -> subprocess.Popen[bytes]:
    """A `saga flower` on the bench database's deployment, once it answers."""
    from tests.stack import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": db.url,
           "SAGA_BROKER_URL": BROKERS[broker], "SAGA_FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)}
    log = folder / f"flower-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "saga.cli", "flower", "--port", str(port),
                                    "--persistent=False", "--max_tasks=100000"], env=env,
                                   cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"flower exited: {log.read_text()}")
        try:
            requests.get(f"http://127.0.0.1:{port}/api/tasks", auth=FLOWER_LOGIN, timeout=2)
            return True
        except requests.RequestException:
            return False

    try:
        wait_for(answers, 30, "flower to answer")
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return process


# -- the report -----------------------------------------------------------------------------

def median(values: Iterable[float | None]) -> float:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def print_result(label: str, result: Result) -> None:
    extra = f"  cpu: bench {result.ours:.2f} cores, others {result.others:.2f}"
    if result.commits_per_step is not None:
        extra += (f"  commits/step {result.commits_per_step:.2f}"
                  f" (writes {result.writes_per_step:.2f}, rollbacks {result.rollbacks_per_step:.2f})")
    elif result.writes_per_step is not None:
        extra += f"  write tx/step {result.writes_per_step:.2f}"
    if result.failed:
        extra += f"  NOT SUCCEEDED: {result.failed}"
    print(f"  {label:<16} {result.n:4d} runs {result.rate:7.1f}/s  p50 {ms(result.p50):>8}"
          f"  p99 {ms(result.p99):>8}"
          f"  one at a time p50 {ms(result.solo_p50)}"
          f"  (submitted in {result.submit_s:.2f}s, took {result.took_s:.0f}s){extra}", flush=True)


def print_comparison(results: dict[tuple[str, str], list[Result]], variants: Sequence[Variant],
                     n: int, repeat: int) -> None:
    """Each variant per repeat and as medians, with its ratio to the "off" run of its repeat."""
    def cpu_ms(result: Result) -> float:
        return 1000 * result.cpu_s / n

    def worker_ms(result: Result) -> float:
        return 1000 * result.worker_cpu_s / n

    def ratio(got: Result, off: Result, value: Callable[[Result], float]) -> float:
        return value(got) / value(off)

    figures: list[tuple[str, Callable[[Result], float], Callable[[float], str]]] = [
        ("sagas/s", lambda r: r.rate, lambda v: f"{v:.1f}"),
        ("p50", lambda r: r.p50, ms),
        ("p99", lambda r: r.p99, ms),
        ("cpu ms/saga", cpu_ms, lambda v: f"{v:.1f}"),
        ("worker ms/saga", worker_ms, lambda v: f"{v:.1f}")]
    headers = ["broker", "repeat", "saga"]
    for title, _, _ in figures:
        headers += [title, "vs off"]
    headers += ["others", "load"]
    lines = []
    brokers = list(dict.fromkeys(broker for broker, _ in results))
    for broker in brokers:
        off = results[(broker, variants[0].name)]
        for index in [*range(repeat), None]:  # each repeat, then the medians
            for kind in [v.name for v in variants] + ["chain"]:
                got = results[(broker, kind)]
                line = [broker, "median" if index is None else str(index + 1), kind]
                for _, value, shown in figures:
                    if index is None:
                        line.append(shown(median(value(g) for g in got)))
                        paired = [ratio(g, o, value) for g, o in zip(got, off, strict=True)]
                        line.append(f"{median(paired):.2f}x" if kind != "chain" else "")
                    else:
                        line.append(shown(value(got[index])))
                        line.append(f"{ratio(got[index], off[index], value):.2f}x"
                                    if kind != "chain" else "")
                chosen = got if index is None else [got[index]]
                line += [f"{median(g.others for g in chosen):.2f}",
                         f"{median(g.load for g in chosen):.1f}"]
                lines.append(line)
    print(f"\n{n} runs of {STEPS} no-op steps, worker -c 2; each figure beside its ratio to "
          f"the \"off\" saga of the same repeat; medians of {repeat} repeat(s) and of the ratios. "
          "chain: the plain Celery chain (baseline); cpu: the worker, the bench process, the "
          "bench database's backends, PostgreSQL's helpers and the broker (the last two shared "
          "with anyone else on those servers); worker: the worker's processes alone; others: "
          "cores busy with the rest of the machine; load: 1-minute load average as the batch "
          "ended")
    print_markdown(headers, lines)


def print_table(rows: dict[str, Row], pg_rates: list[float], pg_rates2: list[float],
                n: int, repeat: int) -> None:
    """The comparisons' summary: the saga as a user gets it against the chain."""
    headers = ["broker", "saga sagas/s", "chain chains/s", "ratio", "saga p50", "chain p50",
               "p50 ratio", "saga p99", "chain p99", "commits/step", "write tx/step",
               "others' load"]
    lines = []
    for broker, row in rows.items():
        pairs = list(zip(row.saga, row.chain, strict=False))
        if not pairs:
            continue
        lines.append([
            broker,
            f"{median(r.rate for r in row.saga):.1f}",
            f"{median(r.rate for r in row.chain):.1f}",
            f"{median(s.rate / c.rate for s, c in pairs):.2f}x",
            ms(median(r.p50 for r in row.saga)),
            ms(median(r.p50 for r in row.chain)),
            f"{median(s.p50 / c.p50 for s, c in pairs):.2f}x",
            ms(median(r.p99 for r in row.saga)),
            ms(median(r.p99 for r in row.chain)),
            f"{median(r.commits_per_step for r in row.saga):.2f}",
            f"{median(r.writes_per_step for r in row.saga):.2f}",
            f"{median(r.others for r in row.saga + row.chain):.2f} cores",
        ])
    print(f"\n{n} runs of {STEPS} no-op steps, worker -c 2, medians of {repeat} repeat(s); "
          "ratios are medians of the per-repeat saga/chain ratios")
    print_markdown(headers, lines)
    one, two = median(pg_rates), median(pg_rates2)
    print(f"\nPostgreSQL commit rate (single-row INSERT + COMMIT): {one:.0f}/s on 1 connection, "
          f"{two:.0f}/s on 2 connections")


def print_markdown(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> None:
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) + " |")


def compare(args: argparse.Namespace, brokers: list[str]) -> int:
    """--observability / --task-events: the saga several ways beside the chain, per repeat."""
    variants = {v.name: v for v in COMPARISONS[args.compare]}
    kinds = ["chain", *variants]
    results: dict[tuple[str, str], list[Result]] = {(b, k): [] for b in brokers for k in kinds}
    pg_rates: list[float] = []
    pg_rates2: list[float] = []
    db = Database()
    print(f"database {db.name}; {args.sagas} runs x {args.repeat} repeat(s) on {', '.join(brokers)}"
          f"; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="saga-bench-") as tmp:
            folder = Path(tmp)
            for r in range(args.repeat):
                print(f"repeat {r + 1}/{args.repeat}", flush=True)
                pg_rates.append(commit_rate(db, 3.0, 1))
                pg_rates2.append(commit_rate(db, 3.0, 2))
                print(f"  PG commits/s       1 conn {pg_rates[-1]:.0f}, 2 conns {pg_rates2[-1]:.0f}",
                      flush=True)
                for broker in brokers:
                    shift = r % len(kinds)  # each kind goes first in turn
                    for kind in kinds[shift:] + kinds[:shift]:
                        if kind == "chain":
                            result = measure_chain(broker, args.sagas, folder)
                        else:
                            result = measure_variant(db, broker, args.sagas, folder,
                                                     variants[kind])
                        results[(broker, kind)].append(result)
                        print_result(f"{broker} {kind}", result)
    finally:
        Worker.stop_all()
        SagaSetup.delete_exchanges()
        db.drop()
    rows = {b: Row(saga=results[(b, DEFAULTS)], chain=results[(b, "chain")]) for b in brokers}
    print_table(rows, pg_rates, pg_rates2, args.sagas, args.repeat)
    print_comparison(results, list(variants.values()), args.sagas, args.repeat)
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


def measure_broker(db: Database, broker: str, folder: Path, n: int | None, repeat: int,
                   solo: int, results: dict[tuple[str, str], list[Result]],
                   batch_s: float = BATCH_S) -> Session:
    """The saga and both chains on one broker: their processes started together and kept
    (idle between their turns), then each repeat measures each kind in turn, a different
    kind first each time. `n` None: batches of about BATCH_S at the kind's last rate."""
    setups: dict[str, SagaSetup | ChainSetup] = {
        "saga": SagaSetup(db, broker, folder), "plain": ChainSetup(broker, "plain", folder),
        "chain": ChainSetup(broker, "chain", folder)}
    kinds = list(setups)
    session = None
    try:
        for setup in setups.values():
            setup.spawn()
        for setup in setups.values():
            setup.ready()
        for r in range(repeat):
            shift = r % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                idle = [pgid for other, s in setups.items() if other != kind for pgid in s.groups()]
                done = results[(broker, kind)]
                size = n or (batch_size(done[-1].rate, batch_s) if done else None)
                result = setups[kind].measure(size, solo, idle=idle, batch_s=batch_s)
                results[(broker, kind)].append(result)
                print_result(f"{broker} {r + 1}/{repeat} {kind}", result)
    finally:
        for kind, setup in setups.items():
            try:
                closed = setup.close()
            except Exception as exc:  # the others still get closed
                print(f"  (closing the {kind} processes failed: {exc})", file=sys.stderr)
                continue
            if isinstance(closed, Session):
                session = closed
    assert session is not None
    return session


def main(argv: list[str] | None = None) -> int:
    from bench import report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=None,
                        help="runs per batch (default: as many as take about --batch-seconds "
                             "at the kind's previous rate, within "
                             f"{MIN_BATCH}..{MAX_BATCH}; 300 with a comparison)")
    parser.add_argument("--batch-seconds", type=float, default=BATCH_S,
                        help="how long a batch should take, without --sagas")
    parser.add_argument("--brokers", default="rabbitmq,redis",
                        help="comma-separated, from: " + ",".join(BROKERS))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-samples", type=int, default=100,
                        help="runs started one at a time, per kind and broker, spread over "
                             "the repeats (the p99 is of all of them)")
    parser.add_argument("--scaling", choices=("on", "off", "only"), default="on",
                        help="the table of 1, 2, 4 worker processes and threads")
    parser.add_argument("--scaling-sagas", type=int, default=None,
                        help="runs per worker configuration (default: as --sagas)")
    parser.add_argument("--scaling-brokers", default="rabbitmq",
                        help="comma-separated brokers for the scaling table")
    parser.add_argument("--scaling-counts", default="1,2,4",
                        help="worker processes / threads to try")
    compare_with = parser.add_mutually_exclusive_group()
    compare_with.add_argument("--observability", dest="compare", action="store_const",
                              const="observability", help="the saga with task events, metrics "
                              "and INFO logs off, then on (metrics served), beside the chain")
    compare_with.add_argument("--task-events", dest="compare", action="store_const",
                              const="task-events", help="the saga with task events off, on, "
                              "and on with Flower watching, beside the chain")
    args = parser.parse_args(argv)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    scaling_brokers = [b.strip() for b in args.scaling_brokers.split(",") if b.strip()]
    counts = [int(c) for c in args.scaling_counts.split(",") if c.strip()]
    unknown = (set(brokers) | set(scaling_brokers)) - BROKERS.keys()
    if args.sagas is None and args.compare:
        args.sagas = 300
    if args.scaling_sagas is None:
        args.scaling_sagas = args.sagas
    if (unknown or not brokers or (args.sagas or 1) < 1 or args.repeat < 1
            or args.latency_samples < 1 or not counts or min(counts) < 1
            or (args.scaling_sagas or 1) < 1 or args.batch_seconds <= 0):
        parser.error(f"unknown broker(s) {sorted(unknown)}" if unknown else "nothing to run")

    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(Worker.stop_all)
    if args.compare:
        return compare(args, brokers)

    began = time.monotonic()
    load_before = os.getloadavg()
    kinds = ["saga", "plain", "chain"]
    main_run = args.scaling != "only"
    results: dict[tuple[str, str], list[Result]] = {(b, k): [] for b in brokers for k in kinds}
    sessions: dict[str, Session] = {}
    pg_rates: dict[int, list[float]] = collections.defaultdict(list)
    scaled: dict[str, list[Scaled]] = {}
    solo = math.ceil(args.latency_samples / args.repeat)
    db = Database()
    print(f"database {db.name}; load average {' '.join(f'{v:.2f}' for v in load_before)}",
          flush=True)
    if main_run:
        size = f"{args.sagas} runs" if args.sagas else f"batches of about {args.batch_seconds:g} s"
        print(f"{size} x {args.repeat} repeat(s) on {', '.join(brokers)}, "
              f"{solo} one at a time per repeat", flush=True)
    try:
        clock = report.clock_offset(db.libpq)
        with tempfile.TemporaryDirectory(prefix="saga-bench-") as tmp:
            folder = Path(tmp)
            for broker in brokers if main_run else []:
                for connections in (1, 2):
                    pg_rates[connections].append(commit_rate(db, 2.0, connections))
                print(f"{broker}: PG commits/s 1 conn {pg_rates[1][-1]:.0f}, "
                      f"2 conns {pg_rates[2][-1]:.0f}", flush=True)
                sessions[broker] = measure_broker(db, broker, folder, args.sagas, args.repeat,
                                                  solo, results, args.batch_seconds)
            if args.scaling != "off":
                print("many workers: 1 repeat", flush=True)
                for connections in sorted({1, 2, *counts, 2 * max(counts)}):
                    pg_rates[connections].append(commit_rate(db, 2.0, connections))
                print("  PG commits/s       " + ", ".join(
                    f"{c} conn {median(v):.0f}" for c, v in sorted(pg_rates.items())), flush=True)
                for broker in scaling_brokers:
                    scaled[broker] = measure_scaling(db, broker, args.scaling_sagas, folder, counts,
                                                     args.batch_seconds)
    finally:
        Worker.stop_all()
        SagaSetup.delete_exchanges()
        db.drop()
    print()
    report.machine(load_before, clock, [r for rs in results.values() for r in rs]
                   + [s.result for ss in scaled.values() for s in ss])
    if main_run:
        report.tables(results, sessions, brokers, args.repeat, solo, pg_rates)
    if scaled:
        report.scaling(scaled, pg_rates)
    print(f"\nload average at the end {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"the bench took {time.monotonic() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
