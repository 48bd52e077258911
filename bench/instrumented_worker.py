"""`saga.cli` with timers: where a worker's time goes, per store call, statement and commit.

    BENCH_STATS_DIR=/tmp/x python -m bench.instrumented_worker worker -c 2

Wraps (at class level, before the pool forks) the engine's and store's hot methods, the
psycopg commit, SQLAlchemy's pre-ping and every statement; each pool child writes its
totals to $BENCH_STATS_DIR/<pid>.json once a second. Only for profiling: the timers cost
a few microseconds a call. `python bench/profile_saga.py` reads the files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import time
from collections import defaultdict
from typing import Any

STATS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # name -> [calls, wall, cpu]
_local = threading.local()


def add(name: str, seconds: float, cpu: float = 0.0) -> None:
    entry = STATS[name]
    entry[0] += 1
    entry[1] += seconds
    entry[2] += cpu


def wrap(owner: Any, attr: str, name: str) -> None:
    original = getattr(owner, attr, None)
    if original is None:  # the code moved on; time what is still there
        return

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            add(name, time.perf_counter() - began, time.thread_time() - cpu)

    setattr(owner, attr, timed)


def wrap_context(owner: Any, attr: str, name: str) -> None:
    """A context-manager method: time from entering to leaving (the whole transaction)."""
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    @contextlib.contextmanager
    def timed(*args: Any, **kwargs: Any) -> Any:
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            with original(*args, **kwargs) as value:
                yield value
        finally:
            add(name, time.perf_counter() - began, time.thread_time() - cpu)

    setattr(owner, attr, timed)


def _statement_name(sql: str) -> str:
    words = sql.split()
    verb = words[0].upper() if words else "?"
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", sql, re.I)
    lock = " FOR UPDATE" if "FOR UPDATE" in sql else " FOR SHARE" if "FOR SHARE" in sql else ""
    target = table.group(1) if table else ("clock" if "clock_timestamp" in sql else "")
    return f"sql {verb} {target}{lock}".strip()


def experiments(names: set[str]) -> None:
    """What-ifs, measured rather than guessed; each breaks a guarantee, never ship them.

    no_preping: the store's engine without any ping, not even after an idle second.
    py_clock: Store.now reads this machine's clock instead of `SELECT clock_timestamp()`
        (what reading the clock inside the statements that need it would save).
    no_heartbeat: no heartbeat thread per step (what one shared heartbeat thread would save).
    core_sql: a run's transaction through SQLAlchemy Core, a round trip a statement, instead
        of psycopg pipelines (what the pipelines save; this one keeps every guarantee).
    """
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from saga import store
    from saga.store import database
    from saga.worker import heartbeat

    if "no_preping" in names:
        original = database.make_engine

        def make_engine(url: str, echo: bool) -> sa.Engine:
            if url.startswith("sqlite"):
                return original(url, echo)
            return sa.create_engine(url, echo=echo, pool_size=5, max_overflow=10)  # no ping

        database.make_engine = make_engine
    if "py_clock" in names:
        store.Store.now = lambda self, conn=None: datetime.now(UTC)
    if "core_sql" in names:
        from saga.store.run_sql import CoreSql

        core = {False: CoreSql(False), True: CoreSql(True)}
        store.Store.run_sql = property(lambda self: core[self.is_sqlite])  # type: ignore[assignment]
    if "no_heartbeat" in names:
        heartbeat.Heartbeat.__enter__ = lambda self: self
        heartbeat.Heartbeat.__exit__ = lambda self, *exc: None


def install() -> None:
    experiments({e for e in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if e})
    import psycopg
    import sqlalchemy as sa
    from celery import signals
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    from saga.engine import Engine
    from saga.store import Store
    from saga.tasks import CeleryDispatcher
    from saga.worker.heartbeat import Heartbeat
    from saga.worker.runner import Worker

    wrap(Worker, "run_step", "worker.run_step (whole task body)")
    wrap(Engine, "advance", "engine.advance (advance tx + publish)")
    wrap(Engine, "claim", "engine.claim (claim tx)")
    wrap(Engine, "start", "engine.start (start tx + publish)")
    wrap(Engine, "publish", "engine.publish (broker send)")
    wrap(Worker, "_call", "worker._call (the step's action)")
    wrap(Store, "now", "store.now (SELECT clock_timestamp)")
    wrap_context(Store, "transaction", "store.transaction (one run's tx)")
    wrap(Heartbeat, "__enter__", "heartbeat thread start")
    wrap(Heartbeat, "__exit__", "heartbeat thread stop+join")
    wrap(CeleryDispatcher, "send", "dispatcher.send")
    wrap(psycopg.Connection, "commit", "psycopg COMMIT")
    wrap(psycopg.Connection, "rollback", "psycopg ROLLBACK")
    wrap(PGDialect_psycopg, "do_ping", "pool ping (a connection idle 1 s+)")
    try:
        from saga.store.run_sql import PipelinedSql
    except ImportError:  # before the store sent its hot statements in pipelines
        PipelinedSql = None
    if PipelinedSql is not None:
        wrap(PipelinedSql, "load", "pipeline: load (run FOR UPDATE, steps[, signals])")
        wrap(PipelinedSql, "write", "pipeline: write (step/run rows, events)")
        # Statements sent in a pipeline bypass SQLAlchemy's hooks: count them here.
        execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

        def pipelined(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
            if self.connection._pipeline is not None:
                add("  in pipeline: " + _statement_name(str(query)), 0.0)
            return execute(self, query, params, **kw)

        def pipelined_many(self: Any, query: Any, rows: Any, **kw: Any) -> Any:
            rows = list(rows)
            if self.connection._pipeline is not None:
                for _ in rows:
                    add("  in pipeline: " + _statement_name(str(query)), 0.0)
            return executemany(self, query, rows, **kw)

        psycopg.Cursor.execute, psycopg.Cursor.executemany = pipelined, pipelined_many

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        _local.began = time.perf_counter(), time.thread_time()

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        add(_statement_name(statement), time.perf_counter() - _local.began[0],
            time.thread_time() - _local.began[1])

    @signals.task_prerun.connect(weak=False)
    def _prerun(**_kw: Any) -> None:
        _local.task_began = time.perf_counter(), time.thread_time()

    @signals.task_postrun.connect(weak=False)
    def _postrun(**_kw: Any) -> None:
        add("celery task (prerun..postrun)", time.perf_counter() - _local.task_began[0],
            time.thread_time() - _local.task_began[1])
        profiler = getattr(_local, "profiler", None)
        if profiler is not None and STATS["celery task (prerun..postrun)"][0] % 50 == 0:
            profiler.disable()  # dump now and then, from the thread that runs the tasks
            profiler.dump_stats(os.path.join(os.environ["BENCH_STATS_DIR"], f"{os.getpid()}.prof"))
            profiler.enable()

    @signals.worker_process_init.connect(weak=False)
    def _child(**_kw: Any) -> None:
        STATS.clear()
        folder = os.environ.get("BENCH_STATS_DIR")
        if not folder:
            return
        born = time.perf_counter()
        if os.environ.get("BENCH_CPROFILE"):
            import cProfile

            _local.profiler = cProfile.Profile()
            _local.profiler.enable()

        def dump() -> None:
            path = os.path.join(folder, f"{os.getpid()}.json")
            while True:
                time.sleep(1.0)
                data = {"alive_s": time.perf_counter() - born, "cpu_s": time.process_time(),
                        "stats": {k: list(v) for k, v in list(STATS.items())}}
                with open(path + ".tmp", "w") as f:
                    json.dump(data, f)
                os.replace(path + ".tmp", path)

        threading.Thread(target=dump, daemon=True, name="bench-stats").start()


if __name__ == "__main__":
    install()
    from saga.cli import main

    main(prog_name="saga")
