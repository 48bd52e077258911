"""The report of `bench/throughput.py`: the machine, then markdown tables to paste.

Medians over the repeats; each ratio is the median of the per-repeat ratios, so it pairs
measurements taken minutes apart at most, under the same load from others.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from importlib.metadata import version
from pathlib import Path

import psycopg

from bench.taps import ALL
from bench.throughput import (
    BENCH_CPU,
    BROKERS,
    CORES,
    OTHERS_CPU,
    PUBLISHED,
    SETUP_WARMUP,
    STEPS,
    WORKER_CPU,
    Result,
    Scaled,
    Session,
    median,
    ms,
    percentile,
    print_markdown,
)

SHORT = {"saga": "saga via API", "plain": "chain, Celery defaults",
         "chain": "chain, saga's settings"}
TARGET = 0.8  # the issue's: the saga's sagas/s at least 0.8x the plain chain's
_server: dict[str, str] = {}


def clock_offset(libpq: str, samples: int = 20) -> tuple[float, float]:
    """(PostgreSQL's clock_timestamp() minus this process's time.time(), round trip), in
    seconds, medians of `samples` reads: the latencies subtract one from the other. Also
    notes the server's version for `machine`."""
    offsets, trips = [], []
    with psycopg.connect(libpq, autocommit=True) as conn:
        _server["postgresql"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        for _ in range(samples):
            before = time.time()
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            after = time.time()
            assert row is not None
            offsets.append(row[0] - (before + after) / 2)
            trips.append(after - before)
    return statistics.median(offsets), statistics.median(trips)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def _broker_versions() -> str:
    found = []
    try:
        import redis

        client = redis.Redis.from_url(BROKERS["redis"], socket_timeout=3)
        found.append(f"Redis {client.info('server')['redis_version']}")
        client.close()
    except Exception:
        pass
    try:
        from kombu import Connection

        with Connection(BROKERS["rabbitmq"], connect_timeout=3) as conn:
            conn.connect()
            properties = conn.connection.server_properties
            found.append(f"RabbitMQ {properties.get('version', '?')}")
    except Exception:
        pass
    return ", ".join(found)


def machine(load_before: tuple[float, float, float], clock: tuple[float, float],
            results: Sequence[Result]) -> None:
    others = [r.others for r in results if r.cpu_wall_s]
    print("### The machine\n")
    print(f"- {CORES} cores ({os.cpu_count()} online), {_cpu_model()}, "
          f"{_memory_gb():.1f} GB; {platform.system()} {platform.release()}")
    print(f"- PostgreSQL {_server.get('postgresql', '?')}, {_broker_versions()}; Python "
          f"{platform.python_version()}, Celery {version('celery')}, kombu {version('kombu')}, "
          f"gunicorn {version('gunicorn')}")
    load_now = os.getloadavg()
    print(f"- load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in load_before)} at the "
          f"start, {' '.join(f'{v:.2f}' for v in load_now)} at the end")
    if others:
        print(f"- others' CPU during the measured batches (everything on the machine but the "
              f"bench's processes): median {median(others):.2f} cores, "
              f"{min(others):.2f} to {max(others):.2f}, of {CORES}")
    print(f"- PostgreSQL's clock_timestamp() - time.time(): {clock[0] * 1000:+.2f} ms "
          f"(round trip {clock[1] * 1000:.2f} ms): latencies mix the two clocks; one host, "
          "one clock")
    sys.stdout.flush()


def _ratio(saga: Sequence[Result], chain: Sequence[Result], value: Callable[[Result], float]) -> str:
    pairs = [value(s) / value(c) for s, c in zip(saga, chain, strict=False) if value(c)]
    return f"{median(pairs):.2f}x" if pairs else "n/a"


def _tapped(results: Sequence[Result], key: str) -> str:
    """Per step, the task events of routing key `key` (or taps.ALL) the tap counted."""
    def per_step(r: Result) -> float | None:
        count = None if r.tapped is None else r.tapped.get(key)
        return None if count is None or not r.tapped_steps else count / r.tapped_steps

    return _median_text(results, per_step, lambda v: f"{v:.2f}")


def _cpu_ms(result: Result, kind: str) -> float | None:
    spent = result.cpu_by_kind.get(kind)
    return None if spent is None else 1000 * spent / result.n


def _published(session: Session) -> tuple[str, str]:
    """(step messages, task-event messages) per step, from the saga's own counters, summed
    over their series; n/a where a counter is missing."""
    if session.published is None or not session.steps:
        return "n/a", "n/a"
    shown = []
    for name in PUBLISHED:
        found = [v for k, v in session.published.items() if k.startswith(name + "{")]
        shown.append(f"{sum(found) / session.steps:.2f}" if found else "n/a")
    return shown[0], shown[1]


def _median_text(results: Iterable[Result], value: Callable[[Result], float | None],
                 shown: Callable[[float], str], missing: str = "n/a") -> str:
    present = [v for v in (value(r) for r in results) if v is not None]
    return shown(statistics.median(present)) if present else missing


def _sizes(results: Iterable[Result]) -> str:
    sizes = sorted(r.n for r in results)
    if not sizes:
        return "no runs"
    return f"{sizes[0]} runs" if sizes[0] == sizes[-1] else f"{sizes[0]} to {sizes[-1]} runs"


def tables(results: dict[tuple[str, str], list[Result]], sessions: dict[str, Session],
           brokers: Sequence[str], repeat: int, solo: int,
           pg_rates: dict[int, list[float]]) -> None:
    saga, plain, chain = "saga", "plain", "chain"

    every = [r for rs in results.values() for r in rs]
    print(f"\n### Throughput: runs of {STEPS} no-op steps, medians of {repeat} repeat(s)\n")
    print("saga: started by POST /v1/sagas/bench_five/runs (Idempotency-Key each) from 4 client "
          "threads to `saga api` (gunicorn, 2 workers x 4 threads), run by `saga worker -c 2` "
          "(prefork; task events on, INFO logs, metrics counted and served on --metrics-port). "
          "Chains: five no-op Celery tasks, `celery worker -c 2` (prefork), started by 4 "
          "threads calling apply_async. Throughput = N / (last end - first start): the saga's "
          "from the runs table (first created_at, last finished_at), the chain's from its "
          "first submit to its last task's end. Ratios: median of the per-repeat ratios. "
          f"Batches of {_sizes(every)} (unless --sagas, as many as take about --batch-seconds "
          "at the kind's previous rate).\n")
    headers = ["broker", "saga via API /s", "chain, Celery defaults /s", "saga/chain",
               f"target >= {TARGET:.1f}x", "chain, saga's settings /s", "saga/that chain",
               "saga steps/s"]
    lines = []
    for broker in brokers:
        s, p, c = (results[(broker, k)] for k in (saga, plain, chain))
        if not s:
            continue
        ratio = median(a.rate / b.rate for a, b in zip(s, p, strict=False))
        lines.append([broker, f"{median(r.rate for r in s):.1f}", f"{median(r.rate for r in p):.1f}",
                      f"{ratio:.2f}x", "met" if ratio >= TARGET else "NOT met",
                      f"{median(r.rate for r in c):.1f}", _ratio(s, c, lambda r: r.rate),
                      f"{STEPS * median(r.rate for r in s):.0f}"])
    print_markdown(headers, lines)
    print("\nCPU of all of the bench's processes per run (worker, API, client, the bench "
          "database's backends, the broker; table below), which depends less on others' "
          "load than the rates: where the CPU is the limit, the throughput ratio tends to the "
          "inverse of this ratio.\n")
    headers = ["broker", "saga ms/run", "chain (defaults) ms/run", "saga/chain",
               "chain (saga's) ms/run", "saga/that chain", "others' load"]
    lines = []
    for broker in brokers:
        s, p, c = (results[(broker, k)] for k in (saga, plain, chain))
        if not s:
            continue

        def cpu_ms(r: Result) -> float:
            return 1000 * r.cpu_s / r.n

        lines.append([broker, f"{median(cpu_ms(r) for r in s):.1f}",
                      f"{median(cpu_ms(r) for r in p):.1f}", _ratio(s, p, cpu_ms),
                      f"{median(cpu_ms(r) for r in c):.1f}", _ratio(s, c, cpu_ms),
                      f"{median(r.others for r in s + p + c):.2f} of {CORES} cores"])
    print_markdown(headers, lines)
    others = median(r.others for r in every)
    if others > 0.5:
        print(f"\nNOTE: others kept a median {others:.2f} of the {CORES} cores busy. Every kind "
              "ran short of CPU, and the scheduler shares it by process: the saga (API and "
              "worker processes) gets more of it than a chain's worker alone, so its throughput "
              "ratios lean in its favour. The CPU per run is the steadier comparison.")
    failed = {b: sum(r.failed for r in results[(b, saga)]) for b in brokers}
    if any(failed.values()):
        print(f"\nWARNING: runs that did not succeed: {failed}")

    print(f"\n### Latency, one at a time: {solo * repeat} runs of each, each started after the "
          "previous finished\n")
    print("saga: from the API's 201 reaching the client to the run's finished_at (the database's "
          "clock as its last transaction began: a few ms before that commit returned), and "
          "from the POST being sent. Chains: from apply_async returning (and from its call) "
          "to the last task's end. p99 of all the runs of every repeat.\n")
    headers = ["broker", "saga 201->end p50", "p99", "saga POST->end p50", "p99",
               "chain (defaults) p50", "p99", "chain (saga's) p50", "p99",
               "saga/chain (defaults) p50"]
    lines = []
    for broker in brokers:
        s, p, c = (results[(broker, k)] for k in (saga, plain, chain))
        if not s:
            continue

        def pooled(rs: Sequence[Result], sent: bool = False) -> list[float]:
            return [v for r in rs for v in (r.solo_sent if sent else r.solo)]

        line = [broker]
        for values in (pooled(s), pooled(s, sent=True), pooled(p), pooled(c)):
            line += [ms(percentile(values, 0.5)), ms(percentile(values, 0.99))]
        line.append(f"{percentile(pooled(s), 0.5) / percentile(pooled(p), 0.5):.2f}x")
        lines.append(line)
    print_markdown(headers, lines)

    print("\n### Cost per step\n")
    print("write tx: transactions that wrote, count(DISTINCT xmin) of the measured runs' events "
          "/ their steps (every write transaction appends an event). commits and rollbacks: "
          "pg_stat_database over the broker's whole session (every run of every repeat; read "
          "before the saga's processes started and after they all ended), minus the bench's own "
          "polls, / steps: also the pool's pings of idle connections, the API's token reads and read-only "
          "transactions. app counters: saga_messages_published_total (step messages) and "
          "saga_task_event_messages_total (the task-event messages the saga sends itself: "
          "task-sent, and those of inline attempts; not Celery's own for a message's task) from "
          "the worker's --metrics-port and the API's /metrics, at the session's end, / its steps"
          " (n/a: not in this version). On the "
          f"broker: the task events of the {SETUP_WARMUP} warm-up runs, counted by a tap on the "
          "deployment's event exchange (bench/taps.py): the dispatcher announces each step "
          "message with one task-sent event of its own, so task-sent/step is the step messages "
          "published; event msgs, every message of task events (a worker sends its own several "
          "to a task.multi message). The plain chain sends no events and publishes one message "
          "per task (each task publishes the next); the chain on the saga's settings is tapped "
          "the same way (per task).\n")
    headers = ["broker", "write tx/step", "commits/step", "rollbacks/step",
               "step msgs/step (app counter)", "saga's event msgs/step (app counter)",
               "task-sent/step (broker)", "event msgs/step (broker)",
               "chain (saga's): event msgs/task"]
    lines = []
    for broker in brokers:
        s, c = results[(broker, saga)], results[(broker, chain)]
        session = sessions.get(broker)
        if not s or session is None:
            continue
        lines.append([
            broker, _median_text(s, lambda r: r.writes_per_step, lambda v: f"{v:.2f}"),
            f"{session.commits_per_step:.2f}", f"{session.rollbacks_per_step:.2f}",
            *_published(session), _tapped(s, "task.sent"), _tapped(s, ALL), _tapped(c, ALL)])
    print_markdown(headers, lines)
    for broker in brokers:
        session = sessions.get(broker)
        if session is not None and session.published and session.steps:
            print(f"\n{broker}, the counters by series, per step: " + ", ".join(
                f"{k} {v / session.steps:.3f}" for k, v in sorted(session.published.items())))
    one, two = median(pg_rates.get(1, [])), median(pg_rates.get(2, []))
    print(f"\nPostgreSQL commit rate (single-row INSERT + COMMIT, 2 s each, medians): {one:.0f}/s "
          f"on 1 connection, {two:.0f}/s on 2 connections")
    for broker in brokers:
        writes = median(r.writes_per_step for r in results[(broker, saga)])
        if writes == writes and writes > 0:
            print(f"  {broker}: at {writes:.2f} write transactions per step, commits alone cap "
                  f"the saga near {two / (writes * STEPS):.0f} sagas/s (2 connections)")

    print("\n### CPU by process kind during the batch: ms of CPU per run, medians\n")
    print("worker: the worker's process group (saga worker or celery worker, parent and "
          "children); api: gunicorn's; bench: this process (the client threads, the polls); "
          "the broker and PostgreSQL's helpers are shared with anyone else using them; "
          "others: the rest of the machine, in cores.\n")
    kinds: list[str] = []
    for rs in results.values():
        for r in rs:
            kinds += [k for k in r.cpu_by_kind if k not in kinds]
    order = [WORKER_CPU, "api (gunicorn: arbiter + workers)", BENCH_CPU]
    kinds = [k for k in order if k in kinds] + sorted(k for k in kinds if k not in order)
    headers = ["broker", "process kind", SHORT[saga], SHORT[plain], SHORT[chain]]
    lines = []
    for broker in brokers:
        for kind in kinds:
            line = [broker, kind.replace(OTHERS_CPU, "others (cores)")]
            for k in (saga, plain, chain):
                rs = results[(broker, k)]
                if kind == OTHERS_CPU:
                    line.append(_median_text(rs, lambda r: r.others, lambda v: f"{v:.2f} cores"))
                else:
                    line.append(_median_text(rs, partial(_cpu_ms, kind=kind),
                                             lambda v: f"{v:.1f}", missing="-"))
            lines.append(line)
        totals = [broker, "total of the bench's processes"]
        for k in (saga, plain, chain):
            totals.append(_median_text(results[(broker, k)], lambda r: 1000 * r.cpu_s / r.n,
                                       lambda v: f"{v:.1f}"))
        lines.append(totals)
    print_markdown(headers, lines)
    sys.stdout.flush()


def scaling(scaled: dict[str, list[Scaled]], pg_rates: dict[int, list[float]]) -> None:
    print("\n### Many workers: runs started through the API, 1 repeat\n")
    print("prefork: `saga worker -c N`; threads: `saga worker --pool threads -c N`. write tx/s: "
          "the batch's write transactions (distinct xmin of its events) over its window; PG "
          "commits/s: single-row INSERT + COMMIT on as many connections, the commit rate "
          "PostgreSQL gives this machine, and how much of it the saga used. worker: cores its "
          "process group used; bench: the cores of every process of the bench (worker, API, "
          f"client, the bench database's backends, the broker), of {CORES}; others: the rest of "
          "the machine's. Where bench + others reach the cores, the CPU is the limit; where "
          "write tx / PG nears 100%, PostgreSQL's commits are.\n")
    headers = ["broker", "pool", "N", "runs", "sagas/s", "steps/s", "write tx/s",
               "PG commits/s at N conns", "write tx / PG", "worker cores", "bench cores",
               "others (cores)"]
    lines = []
    for broker, rows in scaled.items():
        for row in rows:
            r = row.result
            writes = r.writes / r.window_s
            pg = median(pg_rates.get(row.concurrency, []))
            lines.append([broker, row.pool, str(row.concurrency), str(r.n), f"{r.rate:.1f}",
                          f"{STEPS * r.rate:.0f}", f"{writes:.0f}",
                          f"{pg:.0f}" if pg == pg else "n/a",
                          f"{writes / pg:.0%}" if pg == pg and pg else "n/a",
                          f"{r.worker_cpu_s / r.cpu_wall_s:.2f}" if r.cpu_wall_s else "n/a",
                          f"{r.ours:.2f}", f"{r.others:.2f}"])
    print_markdown(headers, lines)
    print("\nPostgreSQL commit rate by connections (single-row INSERT + COMMIT, 2 s): " + ", ".join(
        f"{c}: {median(v):.0f}/s" for c, v in sorted(pg_rates.items())))
    sys.stdout.flush()

