"""What a waiting run costs: its creation, database bytes, worker and sweeper memory, sweep time.

    python bench/waiting.py [--runs 100000] [--small 1000] [--due 10] [--sweeps 25]
                            [--threads 4] [--redispatch-s 86400] [--deadline S] [--timeout S]

Two fresh PostgreSQL databases (`bench_wait_<random>`, created and dropped): a small one
with `--small` runs and a large one with `--runs`. Every run in both is real: this process
starts it with `Engine.start` (the path `POST /runs` and `saga start` take, minus HTTP),
from `--threads` threads as fast as the calls return, half of them a saga whose second
step is a 30-day `Wait`, half one whose second step is a `WaitForSignal` with a 30-day
timeout (`bench/waiting_sagas.py`). A real `saga worker -c 2` runs the first step of each
and takes it to its wait, a real `saga sweeper` runs beside it, both on RabbitMQ; the bench
polls until every run's second step is `waiting`. The creation time is the wall time of
the `Engine.start` calls; "all waiting" is from the first start to the last run waiting.
Then it reads the worker's resident memory (the prefork parent and its children), the
sweeper's, and what the idle sweeper and its PostgreSQL backends burn in CPU. That window
comes before any VACUUM: on this server (autovacuum off) the sweeper's `leases_expired`
then still walks the dead `steps_lease_due` entries every run's first step left behind
(at 20,000 runs: 19,000 entries and 950 heap pages, 4 ms a sweep; after VACUUM ANALYZE
one buffer, 0.05 ms), which is why its PostgreSQL CPU grows with the runs just started.

The start burst outruns the worker, so the broker holds a backlog (tens of thousands of
messages, for most of an hour with 100,000 runs on a busy 2-core machine). A queued step
unclaimed for SAGA_REDISPATCH_S (default 10 s) is published again by the sweeper, again
and again (backing off up to 32 times that), and the worker spends its time dropping the
duplicates: with 600 s, 16,000 of the first 41,000 runs were republished and the worker
fell to 10 runs/s. The bench runs every process with `--redispatch-s` (a day) so it
measures waiting, not a backlog's redispatch; the report counts any republished anyway.

Sizes: after a VACUUM ANALYZE (this server runs with autovacuum off; a live one would
have vacuumed), `pg_total_relation_size` of runs, steps, events and signals (heap, TOAST
and indexes) divided by the runs in the database, per table and in all; and the marginal
bytes of one more waiting run, the difference between the two databases over the
difference in runs, which leaves out what an empty schema takes.

Sweeps: with both databases populated and the processes stopped (so no real sweeper takes
the due rows), it measures `sweep_once` in this process, alternating between the
databases: before each sweep one UPDATE makes `--due` waiting steps due (half timers, half
signal timeouts, picked at random, wake_at in the past), the sweep must wake exactly
those, and the median duration (and the part spent advancing the due runs) is reported
beside the median of an empty sweep, with the ratio large / small. The wakeup query is
captured as the store sends it and run under EXPLAIN ANALYZE to show its plan; every other
sweep query is EXPLAIN ANALYZEd for the index it reads and the buffers it touches.

The end: a Markdown table of the figures (for docs/scaling.md) and whether they meet the
targets (sweep at --runs within 1.5x of --small; at most 3 KB of PostgreSQL per waiting run).

Everything is bounded: `--deadline` for populating the large database (default
900 + runs / 8 s: 3.7 hours for 100,000), `--timeout` for the whole bench (default the
deadline + 30 min); on any error, SIGTERM or timeout the processes are stopped, their
queues deleted and both databases dropped. On this 2-core machine, shared with other
work, 100,000 runs take one to two hours to reach their wait.

Servers (override with environment variables, as in bench/throughput.py):
BENCH_DATABASE_URL (an admin database on the PostgreSQL server) and BENCH_RABBITMQ_URL.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.throughput import ADMIN_URL, BROKERS, Worker, _on_sigterm, delete_queue, wait_for  # noqa: E402
from bench.waiting_sagas import SIGNAL_SAGA, SIGNAL_STEP, TIMER_SAGA, TIMER_STEP  # noqa: E402

BROKER_URL = BROKERS["rabbitmq"]
SAGAS_MODULE = "bench.waiting_sagas"
TABLES = ("runs", "steps", "events", "signals")
TICK = os.sysconf("SC_CLK_TCK")
IDLE_WINDOW_S = 10.0  # how long the idle sweeper's CPU is watched


# -- the database -----------------------------------------------------------------------

class Database:
    """A fresh `bench_wait_<random>` database, migrated; dropped by `drop`."""

    live: list[Database] = []

    def __init__(self, label: str) -> None:
        from saga import migrations

        self.label = label
        self.name = f"bench_wait_{uuid.uuid4().hex[:10]}"
        self.admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.name}"')
        Database.live.append(self)
        self.url = sa.make_url(ADMIN_URL).set(database=self.name).render_as_string(
            hide_password=False)
        engine = sa.create_engine(self.url)
        migrations.upgrade(engine)
        engine.dispose()

    @property
    def libpq(self) -> str:
        return self.url.replace("+psycopg", "", 1)

    def tagged(self, application: str) -> str:
        """The URL with an application_name, so its sessions can be found in pg_stat_activity."""
        return f"{self.url}?application_name={application}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.libpq, autocommit=True)

    def drop(self) -> None:
        if self in Database.live:
            Database.live.remove(self)
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        self.admin.dispose()

    @classmethod
    def drop_all(cls) -> None:
        for db in list(cls.live):
            try:
                db.drop()
            except Exception as exc:  # keep cleaning the others
                print(f"  (could not drop {db.name}: {exc})", file=sys.stderr)


# -- processes and their memory ---------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """pid and every process below it (the prefork worker's children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(parents.get(current, []))
    return out


def _status_kb(pid: int, key: str, file: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    processes: int
    rss_kb: int  # sum of VmRSS: shared pages (the forked code) counted once per process
    pss_kb: int  # sum of Pss: shared pages split between the processes sharing them

    def __str__(self) -> str:
        return f"{self.rss_kb / 1024:.0f} MB"


def memory(pid: int) -> Memory:
    pids = descendants(pid)
    return Memory(len(pids), sum(_status_kb(p, "VmRSS") for p in pids),
                  sum(_status_kb(p, "Pss", "smaps_rollup") for p in pids))


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def backends(db: Database, application: str) -> list[int]:
    with db.admin.connect() as conn:
        return list(conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (db.name, application)).scalars())


# -- one population: N runs waiting ---------------------------------------------------------

@dataclass
class Population:
    label: str
    runs: int  # started by the bench's threads (two warm-up starts come on top)
    start_s: float = 0.0  # all Engine.start calls returned
    waiting_s: float = 0.0  # from the first start until every run was waiting
    republished: int = 0  # extra dispatches of the no-op step by the real sweeper (a backlog)
    worker_idle: Memory = field(default_factory=lambda: Memory(0, 0, 0))
    worker_after: Memory = field(default_factory=lambda: Memory(0, 0, 0))
    sweeper_idle: Memory = field(default_factory=lambda: Memory(0, 0, 0))
    sweeper_after: Memory = field(default_factory=lambda: Memory(0, 0, 0))
    sweeper_cpu: float = 0.0  # CPU seconds per second: the idle sweeper process
    sweeper_pg_cpu: float = 0.0  # ... and its PostgreSQL backends
    rows: int = 0  # runs in the database, counted
    db_bytes: int = 0
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)  # name: (total, indexes)
    indexes: list[tuple[str, int]] = field(default_factory=list)  # (name, bytes), largest first
    events_per_run: float = 0.0
    sweep_due: list[float] = field(default_factory=list)
    advancing: list[float] = field(default_factory=list)  # of each sweep_due: in engine.advance
    sweep_empty: list[float] = field(default_factory=list)
    plans: list[str] = field(default_factory=list)
    wakeup_plan: str = ""
    # Pool checkouts of one sweep with `due` due: a read or a transaction each. (Its
    # statements are not counted: the run transactions pipeline theirs past SQLAlchemy.)
    due_checkouts: int = 0

    @property
    def start_rate(self) -> float:
        return self.runs / self.start_s

    @property
    def waiting_rate(self) -> float:
        return self.runs / self.waiting_s

    @property
    def log_bytes(self) -> int:
        """runs + steps + events + signals: heap, TOAST and indexes."""
        return sum(total for total, _ in self.tables.values())

    def per_run(self, table: str | None = None) -> float:
        """Bytes per run in the database: of one table, or of the four."""
        total = self.log_bytes if table is None else self.tables[table][0]
        return total / max(1, self.rows)


def start_in_threads(engine: Any, n: int, threads: int, deadline: float, label: str) -> float:
    """Start n runs (even: timer, odd: signal) from `threads` threads; seconds taken."""
    errors: list[BaseException] = []
    counter = iter(range(n))
    started = [0]
    lock = threading.Lock()

    def run() -> None:
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                engine.start(TIMER_SAGA if i % 2 == 0 else SIGNAL_SAGA, {"i": i})
                started[0] += 1  # a racy count is fine: it only feeds the progress line
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    began = time.perf_counter()
    for thread in workers:
        thread.start()
    next_report = began + 60
    while (alive := [t for t in workers if t.is_alive()]) and time.monotonic() < deadline + 5:
        alive[0].join(5.0)
        if time.perf_counter() >= next_report:
            next_report += 60
            print(f"    {label}: {started[0]}/{n} started after "
                  f"{time.perf_counter() - began:.0f}s", flush=True)
    taken = time.perf_counter() - began
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in workers) or next(counter, None) is not None:
        raise TimeoutError(f"starting {n} runs did not finish within the deadline")
    return taken


def one(conn: psycopg.Connection, query: str, parameters: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(query, parameters).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query}")
    return row


def count_waiting(conn: psycopg.Connection) -> int:
    return int(one(conn, "SELECT count(*) FROM steps WHERE status = 'waiting'")[0])


def populate(db: Database, n: int, options: argparse.Namespace, folder: Path,
             deadline_s: float) -> Population:
    """N runs waiting in `db`, each started by `Engine.start` and taken to its wait by a real
    worker while a real sweeper runs; their costs."""
    from saga.settings import Settings
    from saga.system import build

    result = Population(db.label, n)
    queue = f"bench-wait-{uuid.uuid4().hex[:8]}"
    sweeper_app = f"wait-sweeper-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_BROKER_URL": BROKER_URL,
           "SAGA_SAGAS": SAGAS_MODULE, "SAGA_DEFAULT_QUEUE": queue,
           "SAGA_REDISPATCH_S": str(options.redispatch_s)}
    cli = [sys.executable, "-m", "saga.cli", "--log-level", "INFO"]
    worker = Worker(f"worker-{db.label}", [*cli, "worker", "-c", str(options.concurrency)],
                    {**env, "SAGA_DATABASE_URL": db.tagged(f"wait-worker-{db.label}")}, folder)
    sweeper = Worker(f"sweeper-{db.label}", [*cli, "sweeper"],
                     {**env, "SAGA_DATABASE_URL": db.tagged(sweeper_app)}, folder)
    settings = Settings(database_url=db.url, broker_url=BROKER_URL, sagas=(SAGAS_MODULE,),
                        default_queue=queue, redispatch_s=options.redispatch_s)
    system = None
    try:
        worker.wait_ready()

        def sweeper_up() -> bool:
            if sweeper.popen.poll() is not None:
                raise RuntimeError(f"sweeper exited:\n{sweeper.output()[-3000:]}")
            return bool(backends(db, sweeper_app))

        wait_for(sweeper_up, 60, "the sweeper to connect", interval=0.2)
        time.sleep(2.0)  # let both settle before the baseline
        result.worker_idle = memory(worker.popen.pid)
        result.sweeper_idle = memory(sweeper.popen.pid)

        system = build(settings)
        engine = system.engine
        engine.start(TIMER_SAGA, {"i": -1})  # warm the pool and the broker connection
        engine.start(SIGNAL_SAGA, {"i": -2})
        n_total = n + 2
        deadline = time.monotonic() + deadline_s
        began = time.perf_counter()
        result.start_s = start_in_threads(engine, n, options.threads, deadline, db.label)
        print(f"  {db.label}: started {n} runs in {result.start_s:.1f}s "
              f"({result.start_rate:.0f}/s)", flush=True)
        with db.connect() as poll:
            last_print = time.monotonic()

            def all_waiting() -> bool:
                nonlocal last_print
                if worker.popen.poll() is not None:
                    raise RuntimeError(f"worker exited:\n{worker.output()[-3000:]}")
                waiting = count_waiting(poll)
                if time.monotonic() - last_print > 60:
                    last_print = time.monotonic()
                    print(f"    {waiting}/{n_total} waiting after "
                          f"{time.perf_counter() - began:.0f}s", flush=True)
                return waiting >= n_total

            wait_for(all_waiting, max(5.0, deadline - time.monotonic()),
                     f"{n_total} runs to be waiting in {db.label}", interval=2.0)
            result.waiting_s = time.perf_counter() - began
            result.republished = one(
                poll, "SELECT coalesce(sum(dispatches - 1), 0) FROM steps WHERE name = 'prepare'")[0]
        print(f"  {db.label}: all waiting after {result.waiting_s:.1f}s "
              f"({result.waiting_rate:.0f} runs/s end to end)", flush=True)
        time.sleep(2.0)
        result.worker_after = memory(worker.popen.pid)
        result.sweeper_after = memory(sweeper.popen.pid)

        # The idle sweeper: N waiting, nothing due. Its CPU, and its PostgreSQL backends'.
        pg = backends(db, sweeper_app)
        own = descendants(sweeper.popen.pid)
        before = cpu_seconds(own), cpu_seconds(pg)
        time.sleep(IDLE_WINDOW_S)
        pg_after = backends(db, sweeper_app)
        result.sweeper_cpu = (cpu_seconds(own) - before[0]) / IDLE_WINDOW_S
        result.sweeper_pg_cpu = (cpu_seconds(pg) - before[1]) / IDLE_WINDOW_S
        if sorted(pg_after) != sorted(pg):
            print(f"  (the sweeper's backends changed during the idle window: {pg} -> {pg_after})",
                  file=sys.stderr)
    finally:
        sweeper.stop()
        worker.stop()
        if system is not None:
            system.store.close()
        delete_queue(BROKER_URL, queue)
    return result


# -- sizes, plans and sweeps ------------------------------------------------------------------

def sizes(db: Database, result: Population) -> None:
    with db.connect() as conn:
        conn.execute("VACUUM ANALYZE")
        result.db_bytes = one(conn, "SELECT pg_database_size(current_database())")[0]
        for table in TABLES:
            total, indexes = one(conn, "SELECT pg_total_relation_size(%s), pg_indexes_size(%s)",
                                 (table, table))
            result.tables[table] = (total, indexes)
        result.indexes = [(r[0], r[1]) for r in conn.execute(
            "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes"
            " WHERE relname = ANY(%s) ORDER BY 2 DESC", (list(TABLES),))]
        result.rows = one(conn, "SELECT count(*) FROM runs")[0]
        result.events_per_run = one(conn, "SELECT count(*) FROM events")[0] / max(1, result.rows)


def commit_latency(db: Database, count: int = 200) -> float:
    """Median milliseconds of a one-row INSERT + COMMIT (autocommit) on one connection."""
    with db.connect() as conn:
        conn.execute("CREATE TABLE bench_commit (id bigserial PRIMARY KEY, v int)")
        took = []
        for i in range(count):
            began = time.perf_counter()
            conn.execute("INSERT INTO bench_commit (v) VALUES (%s)", (i,))
            took.append(time.perf_counter() - began)
        conn.execute("DROP TABLE bench_commit")
    return statistics.median(took) * 1000


def make_due(conn: psycopg.Connection, due: int) -> int:
    """One UPDATE: `due` random waiting steps (half timers, half signal waits) due a second ago."""
    timers = due - due // 2
    return conn.execute(
        "UPDATE steps SET wake_at = clock_timestamp() - interval '1 second'"
        " WHERE (run_id, name, role) IN ("
        "  (SELECT run_id, name, role FROM steps WHERE status = 'waiting' AND name = %s"
        "   AND wake_at > clock_timestamp() ORDER BY random() LIMIT %s)"
        "  UNION ALL"
        "  (SELECT run_id, name, role FROM steps WHERE status = 'waiting' AND name = %s"
        "   AND wake_at > clock_timestamp() ORDER BY random() LIMIT %s))",
        (TIMER_STEP, timers, SIGNAL_STEP, due // 2)).rowcount


class Capture:
    """The statements (and parameters) an engine sends while inside the `with`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.statements: list[tuple[str, Any]] = []

    def _hook(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))

    def __enter__(self) -> Capture:
        sa.event.listen(self.engine, "before_cursor_execute", self._hook)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._hook)


def explain(store: Any, statement: str, parameters: Any, analyze: bool) -> list[str]:
    options = "ANALYZE, BUFFERS" if analyze else "COSTS OFF"
    with store.engine.connect() as conn:
        lines = list(conn.exec_driver_sql(f"EXPLAIN ({options}) {statement}", parameters).scalars())
        conn.rollback()  # EXPLAIN ANALYZE of a FOR UPDATE query takes locks; let them go
    return lines


def index_of(plan: list[str]) -> str:
    used = sorted({m for line in plan for m in re.findall(r"(?:Index|Index Only) Scan (?:Backward )?using (\w+)", line)})
    scans = sorted({m for line in plan for m in re.findall(r"Seq Scan on (\w+)", line)})
    # A schedules table holds schedules, not runs: its scan does not grow with what waits.
    parts = used + [f"SEQ SCAN {t}" + ("" if t in TABLES else " (no run adds a row)")
                    for t in scans]
    return ", ".join(parts) or "(no scan)"


def sweep_queries(store: Any, captured: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(what, plan summary) for each sweep query of one captured empty sweep, by EXPLAIN ANALYZE."""
    out = []
    for statement, parameters in captured:
        if "ORDER BY" not in statement:
            continue
        match = re.search(r"ORDER BY (\w+\.\w+)", statement)
        what = match.group(1) if match else statement[:40]
        plan = explain(store, statement, parameters, analyze=True)
        buffers = next((line.strip() for line in plan if "Buffers:" in line), "Buffers: none")
        took = next((line.split(":", 1)[1].strip() for line in plan
                     if line.startswith("Execution Time")), "?")
        out.append((what, f"{index_of(plan)}; {buffers}; {took}"))
    return out


def timed_advances(engine: Any) -> list[float]:
    """Wrap this engine's `advance` (a sweep's advance of one due run); [seconds spent in it]."""
    spent = [0.0]
    advance = engine.advance

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return advance(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - began

    engine.advance = timed
    return spent


def measure_sweeps(dbs: list[tuple[Database, Population]], due: int, rounds: int) -> None:
    """Median in-process `sweep_once` with `due` due and with none, alternating the databases."""
    from saga.settings import Settings
    from saga.system import build

    systems = []
    try:
        for db, _ in dbs:
            settings = Settings(database_url=db.url, broker_url=BROKER_URL,
                                sagas=(SAGAS_MODULE,), default_queue=f"bench-wait-{uuid.uuid4().hex[:8]}")
            systems.append(build(settings))
        advancing = [timed_advances(system.engine) for system in systems]
        conns = [db.connect() for db, _ in dbs]
        try:
            for system in systems:  # warm: pools connected, plans cached, pages read
                for _ in range(3):
                    system.sweeper.sweep_once()
            for r in range(rounds):
                order = range(len(dbs)) if r % 2 == 0 else reversed(range(len(dbs)))
                for i in order:
                    (db, result), system, conn = dbs[i], systems[i], conns[i]
                    began = time.perf_counter()
                    empty = system.sweeper.sweep_once()
                    result.sweep_empty.append(time.perf_counter() - began)
                    if empty.total:
                        raise RuntimeError(f"{db.label}: an empty sweep found work: {empty}")
                    made = make_due(conn, due)
                    if made != due:
                        raise RuntimeError(f"{db.label}: made {made} steps due, not {due}")
                    advancing[i][0] = 0.0
                    began = time.perf_counter()
                    swept = system.sweeper.sweep_once()
                    result.sweep_due.append(time.perf_counter() - began)
                    result.advancing.append(advancing[i][0])
                    if swept.wakeups != due or swept.total != due:
                        raise RuntimeError(f"{db.label}: the sweep did {swept}, not {due} wakeups")
            for (_db, result), system, conn in zip(dbs, systems, conns, strict=True):
                store = system.store
                with Capture(store.engine) as capture:
                    system.sweeper.sweep_once()
                result.plans = [f"{what}: {index}" for what, index
                                in sweep_queries(store, capture.statements)]
                make_due(conn, due)
                with Capture(store.engine) as capture:
                    store.wakeups_due(system.settings.sweep_batch)
                statement, parameters = next(
                    (s, p) for s, p in capture.statements if "ORDER BY steps.wake_at" in s)
                result.wakeup_plan = "\n".join(explain(store, statement, parameters, analyze=True))
                checkouts: list[Any] = []

                def checkout(*args: Any, _seen: list[Any] = checkouts) -> None:
                    _seen.append(args[0])

                sa.event.listen(store.engine, "checkout", checkout)
                try:
                    system.sweeper.sweep_once()  # wake them, counting what that takes
                finally:
                    sa.event.remove(store.engine, "checkout", checkout)
                result.due_checkouts = len(checkouts)
        finally:
            for conn in conns:
                conn.close()
    finally:
        for system in systems:
            system.store.close()


# -- the report --------------------------------------------------------------------------------

SWEEP_RATIO_TARGET = 1.5  # a sweep at --runs waiting may cost at most this times one at --small
BYTES_PER_RUN_TARGET = 3 * 1024  # PostgreSQL bytes per waiting run, at most


def mb(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def kb(n: float) -> str:
    return f"{n / 1024:.2f} KB"


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def ratio(large: list[float], small: list[float]) -> float:
    return median_ms(large) / median_ms(small) if large and small else float("nan")


def marginal_bytes(small: Population, large: Population) -> float:
    """Bytes of runs, steps, events and signals one more waiting run adds: the difference
    of the two databases, so what an empty schema takes is left out."""
    return (large.log_bytes - small.log_bytes) / max(1, large.rows - small.rows)


def print_report(small: Population, large: Population, args: argparse.Namespace) -> None:
    due, rounds = args.due, args.sweeps

    def table_row(table: str) -> Callable[[Population], str]:
        return lambda p: (f"{kb(p.per_run(table))} ({mb(p.tables[table][0])}, "
                          f"indexes {mb(p.tables[table][1])})")

    rows: list[tuple[str, Callable[[Population], str]]] = [
        ("runs waiting (half timer, half signal)", lambda p: f"{p.rows}"),
        (f"created by Engine.start, {args.threads} threads", lambda p:
            f"{p.start_s:.1f} s ({p.start_rate:.0f} runs/s)"),
        ("first start -> all waiting", lambda p: f"{p.waiting_s:.1f} s ({p.waiting_rate:.0f} runs/s)"),
        ("no-op steps republished by the sweeper", lambda p: f"{p.republished}"),
        ("events rows per run", lambda p: f"{p.events_per_run:.1f}"),
        *[(f"{t} per run (total, indexes)", table_row(t)) for t in TABLES],
        ("the four tables per run", lambda p: f"{kb(p.per_run())} ({mb(p.log_bytes)})"),
        ("database size (pg_database_size)", lambda p: mb(p.db_bytes)),
        (f"worker RSS, -c {args.concurrency}: at ready", lambda p:
            f"{p.worker_idle} ({p.worker_idle.processes} procs)"),
        (f"worker RSS, -c {args.concurrency}: at the end", lambda p:
            f"{p.worker_after} (PSS {p.worker_after.pss_kb / 1024:.0f} MB)"),
        ("sweeper RSS: at start -> at the end", lambda p: f"{p.sweeper_idle} -> {p.sweeper_after}"),
        (f"idle sweeper CPU over {IDLE_WINDOW_S:.0f}s: process / PG", lambda p:
            f"{100 * p.sweeper_cpu:.1f}% / {100 * p.sweeper_pg_cpu:.1f}% of a core"),
        (f"sweep_once, {due} due (median of {rounds})", lambda p: f"{median_ms(p.sweep_due):.1f} ms"),
        (f"  of which advancing the {due} due runs", lambda p: f"{median_ms(p.advancing):.1f} ms"),
        (f"sweep_once, 0 due (median of {rounds})", lambda p: f"{median_ms(p.sweep_empty):.1f} ms"),
        (f"one sweep with {due} due: pool checkouts", lambda p: f"{p.due_checkouts}"),
    ]
    pops = (small, large)
    labels = [label for label, _ in rows]
    cols = [[fmt(p) for _, fmt in rows] for p in pops]
    width = max(len(x) for x in labels)
    widths = [max(len(x) for x in [*col, p.label]) for col, p in zip(cols, pops, strict=True)]
    print(f"\n{'':<{width}} | {small.label:<{widths[0]}} | {large.label:<{widths[1]}}")
    print("-" * width + "-|-" + "-" * widths[0] + "-|-" + "-" * widths[1])
    for i, label in enumerate(labels):
        print(f"{label:<{width}} | {cols[0][i]:<{widths[0]}} | {cols[1][i]:<{widths[1]}}")

    print(f"\nindexes with {large.label}, largest first (bytes per waiting run):")
    for name, size in large.indexes:
        print(f"  {name:<32} {mb(size):>9}  {size / max(1, large.rows):6.0f} B")
    for p in pops:
        print(f"\nsweep queries with {p.label}, none due (EXPLAIN ANALYZE: indexes read, "
              "buffers of the top node, execution time):")
        for line in p.plans:
            print(f"  {line}")
        print(f"wakeup query with {p.label} and {due} due (EXPLAIN ANALYZE, BUFFERS):")
        for line in p.wakeup_plan.splitlines():
            print(f"  {line}")
    for p in pops:
        print(f"\neach sweep with {due} due, {p.label}: "
              f"{' '.join(f'{1000 * v:.0f}' for v in p.sweep_due)} ms")


def print_summary(small: Population, large: Population, args: argparse.Namespace) -> None:
    """The figures against their targets, and a Markdown table for docs/scaling.md."""
    due_ratio, empty_ratio = ratio(large.sweep_due, small.sweep_due), ratio(
        large.sweep_empty, small.sweep_empty)
    marginal = marginal_bytes(small, large)

    def verdict(ok: bool) -> str:
        return "meets" if ok else "MISSES"

    print(f"\nsweep, {large.rows} waiting / {small.rows} waiting: {due_ratio:.2f}x with {args.due} "
          f"due, {empty_ratio:.2f}x with none due -> {verdict(due_ratio <= SWEEP_RATIO_TARGET)} "
          f"the {SWEEP_RATIO_TARGET}x target")
    print(f"PostgreSQL per waiting run at {large.rows}: {kb(large.per_run())} (marginal, "
          f"the two databases' difference: {kb(marginal)}) -> "
          f"{verdict(max(large.per_run(), marginal) <= BYTES_PER_RUN_TARGET)} the "
          f"{kb(BYTES_PER_RUN_TARGET)} target")
    if large.start_rate:
        print(f"creating 100,000 runs at {large.start_rate:.0f} runs/s takes about "
              f"{100_000 / large.start_rate / 60:.0f} min; all waiting at "
              f"{large.waiting_rate:.0f} runs/s, about {100_000 / large.waiting_rate / 60:.0f} min")

    def split(p: Population) -> str:
        return " / ".join(f"{p.per_run(t) / 1024:.2f}" for t in TABLES)

    lines = [
        ("waiting runs (half 30-day timer, half signal with a 30-day timeout)",
         lambda p: f"{p.rows:,}"),
        (f"created by `Engine.start` ({args.threads} threads)",
         lambda p: f"{p.start_s:.0f} s, {p.start_rate:.0f} runs/s"),
        ("first start to all waiting (`saga worker -c 2`)",
         lambda p: f"{p.waiting_s:.0f} s, {p.waiting_rate:.0f} runs/s"),
        ("PostgreSQL per waiting run (runs, steps, events, signals with indexes)",
         lambda p: kb(p.per_run())),
        ("&nbsp;&nbsp;runs / steps / events / signals, KB", split),
        ("events per waiting run", lambda p: f"{p.events_per_run:.0f}"),
        (f"sweep with {args.due} due, median of {args.sweeps}",
         lambda p: f"{median_ms(p.sweep_due):.1f} ms"),
        ("sweep with none due", lambda p: f"{median_ms(p.sweep_empty):.1f} ms"),
        (f"worker RSS (`-c {args.concurrency}`, {large.worker_after.processes} processes)",
         lambda p: str(p.worker_after)),
        ("sweeper RSS", lambda p: str(p.sweeper_after)),
        ("idle sweeper CPU (process + PostgreSQL)",
         lambda p: f"{100 * (p.sweeper_cpu + p.sweeper_pg_cpu):.1f}% of a core"),
    ]
    print(f"\nFor docs/scaling.md (bench/waiting.py --runs {args.runs} --small {args.small}):\n")
    print(f"| | {small.rows:,} waiting | {large.rows:,} waiting |")
    print("|---|---:|---:|")
    for label, fmt in lines:
        print(f"| {label} | {fmt(small)} | {fmt(large)} |")
    print(f"\nSweep at {large.rows:,} / at {small.rows:,}: {due_ratio:.2f}x with {args.due} due, "
          f"{empty_ratio:.2f}x with none (target <= {SWEEP_RATIO_TARGET}x). One more waiting run "
          f"adds {kb(marginal)} (target <= {kb(BYTES_PER_RUN_TARGET)}). "
          f"{os.cpu_count()} cores, PostgreSQL and RabbitMQ on the same machine.")


def _on_alarm(signum: int, _frame: Any) -> None:
    raise TimeoutError("the bench ran past --timeout; cleaning up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000,
                        help="runs started through the worker into the large database")
    parser.add_argument("--small", type=int, default=1000, help="waiting runs in the small database")
    parser.add_argument("--due", type=int, default=10, help="steps made due before each measured sweep")
    parser.add_argument("--sweeps", type=int, default=25, help="measured sweeps per database")
    parser.add_argument("--threads", type=int, default=4, help="threads calling Engine.start")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (-c)")
    parser.add_argument("--redispatch-s", type=float, default=86400.0,
                        help="SAGA_REDISPATCH_S for the bench (the default 10 makes the sweeper "
                             "republish a start burst's backlog again and again)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds allowed to start the large database's runs and see them "
                             "all waiting (default 900 + runs / 8)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds for the whole bench (default deadline + 1800)")
    args = parser.parse_args(argv)
    if min(args.runs, args.small, args.due, args.sweeps, args.threads, args.concurrency) < 1 \
            or args.small >= args.runs:
        parser.error("need 1 <= --small < --runs, positive --due, --sweeps, "
                     "--threads, --concurrency")
    if args.due * (args.sweeps + 2) > args.small:
        parser.error("--small too small for --due x (--sweeps + 2) wakeups")
    deadline = args.deadline or 900 + args.runs / 8
    timeout = args.timeout or deadline + 1800

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("saga.alerts").setLevel(logging.ERROR)  # each signal timeout alerts
    logging.getLogger("saga.runs").setLevel(logging.ERROR)  # ... and is logged as a failed step
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(int(timeout))
    atexit.register(Database.drop_all)
    atexit.register(Worker.stop_all)  # runs first: the processes let go of the databases
    began = time.monotonic()
    failure: BaseException | None = None
    try:
        small_db, large_db = Database(f"{args.small} waiting"), Database(f"{args.runs} waiting")
        print(f"databases {small_db.name} ({args.small} runs), {large_db.name} ({args.runs} "
              f"runs); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        with tempfile.TemporaryDirectory(prefix="saga-bench-wait-") as tmp:
            folder = Path(tmp)
            small = populate(small_db, args.small, args, folder, 120 + args.small / 10)
            large = populate(large_db, args.runs, args, folder, deadline)
        for db, result in ((small_db, small), (large_db, large)):
            sizes(db, result)
        commit_ms = commit_latency(small_db)
        try:
            measure_sweeps([(small_db, small), (large_db, large)], args.due, args.sweeps)
        except Exception as exc:  # keep what the populations measured; say what failed
            failure = exc
            traceback.print_exc()
    finally:
        signal.alarm(0)
        Worker.stop_all()
        Database.drop_all()
    print_report(small, large, args)
    print(f"\nPostgreSQL INSERT + COMMIT latency on one connection: median {commit_ms:.1f} ms")
    print(f"(total {time.monotonic() - began:.0f}s; load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print_summary(small, large, args)
    if failure is not None:
        print(f"\nTHE SWEEP MEASUREMENT FAILED: {failure!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
