"""Starts per second through the production API: `POST /v1/sagas/{name}/runs` under load.

    python bench/api_load.py [--concurrency 16] [--seconds 20] [--repeat 3]
    python bench/api_load.py --compare /tmp/before      # another source tree, side by side
    python bench/api_load.py --variant t8:SAGA_API_THREADS=8   # other settings, side by side
    python bench/api_load.py --flame /tmp/flame.svg     # py-spy on the gunicorn workers

A real `saga api` (gunicorn, its default --workers/--threads, as compose runs it;
bench.api_server.ApiServer) on a fresh migrated database, with auth on (an `operate` token)
and its rate-limit counters in Redis (as compose keeps them). The client keeps
`--concurrency` starts of `bench_five` in flight, each with a new Idempotency-Key, for a
warm-up and then `--seconds` measured; it reports the 201s per second (the mean over the
window and the slowest second), the p50/p99 of the start call, and the CPU each kind of
process used meanwhile. No worker consumes the step queue (SAGA_QUEUE, deleted at the end):
this measures the start path alone.

Then it checks what a 201 promises: every run it answered for is in the saga log, the same
key and body again answers 200 with the same run, and a bad body is a 4xx.

The client is one asyncio loop on aiohttp (its HTTP parser is C): it costs a few percent of
a core at 500 requests/s, which it shares with the server on this 2-core machine (the
report shows how much). A closed loop (a new request when one returns) measures what the
server sustains; latencies include queueing in gunicorn's backlog when the server is full.

`--compare TREE` measures TREE's `saga api` (a `git archive` of an older commit, with
`saga/api` and `saga/migrations` symlinked to its `api` and `migrations`) and this checkout's
in alternating order on each repeat, each on its own fresh database, and prints medians.
`--flame PATH.svg` records the workers with `py-spy record --gil` (CPU, not waiting) for the
measured window of each server's first repeat and writes a flame graph SVG, PATH-this.svg
(and PATH-compare.svg with --compare); PATH.txt: py-spy's raw collapsed stacks instead.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.api_server import ApiServer  # noqa: E402
from bench.throughput import (  # noqa: E402
    BROKERS,
    CORES,
    Database,
    Worker,
    _postgres_aux,
    delete_queue,
    machine_cpu,
    percentile,
    processes,
    wait_for,
)

SAGA = "bench_five"
RATE_LIMIT_STORAGE = os.environ.get("BENCH_RATE_LIMIT_REDIS_URL", "redis://127.0.0.1:6379/1")
REPLAYED = 50  # keys started again after the batch: each must answer 200 with its run
PY_SPY = Path(sys.executable).parent / "py-spy"
SERVER = "saga api (gunicorn)"
# What a start costs on the machine: the server and what serves it (the broker and Redis
# are shared: another user's load on them counts too).
POSTGRES = "postgres (the bench database's backends)"
OURS = (SERVER, POSTGRES, "rabbitmq", "redis-server", "load generator (this process)")


@dataclass
class Result:
    label: str
    rate: float = 0.0  # 201s per second over the measured window
    slowest_second: int = 0  # the fewest 201s in any whole second of the window
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # kind -> cores busy
    checks: list[str] = field(default_factory=list)
    first_step_ms: list[float] = field(default_factory=list)  # run created -> first step running


# -- the load ------------------------------------------------------------------------------

class Load:
    """`concurrency` loops, each starting a run with a new key as soon as the last answered."""

    def __init__(self, url: str, headers: dict[str, str], concurrency: int) -> None:
        self.url, self.headers, self.concurrency = f"{url}/v1/sagas/{SAGA}/runs", headers, concurrency
        self.body = json.dumps({"input": {}}).encode()
        # (sent, answered, status, key, run id) for the requests sent inside the window
        self.samples: list[tuple[float, float, int, str, str | None]] = []

    async def run(self, warmup_s: float, seconds: float) -> tuple[float, float]:
        """Load for warm-up + `seconds`; the measured window's (start, end) on the monotonic clock."""
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            began = time.monotonic()
            window = (began + warmup_s, began + warmup_s + seconds)
            await asyncio.gather(*(self._loop(session, window) for _ in range(self.concurrency)))
        return window

    async def _loop(self, session: aiohttp.ClientSession, window: tuple[float, float]) -> None:
        while (sent := time.monotonic()) < window[1]:
            key = uuid.uuid4().hex
            async with session.post(self.url, data=self.body,
                                    headers={**self.headers, "Idempotency-Key": key}) as response:
                payload = await response.read()
                status = response.status
            answered = time.monotonic()
            if sent >= window[0]:
                run_id = json.loads(payload)["id"] if status in (200, 201) else None
                self.samples.append((sent, answered, status, key, run_id))
            elif status == 429:  # the warm-up met the rate limit: the window would too
                raise SystemExit(f"429 during the warm-up: {payload[:300]!r}")


def summarize(label: str, load: Load, window: tuple[float, float]) -> Result:
    result = Result(label)
    result.statuses = Counter(status for _, _, status, _, _ in load.samples)
    created = [(s, a) for s, a, status, _, _ in load.samples if status == 201]
    if not created:
        return result
    # Counted by when they answered, within the window: what the server sustained.
    answered = [a for _, a in created if a <= window[1]]
    result.rate = len(answered) / (window[1] - window[0])
    per_second = Counter(int(a - window[0]) for a in answered)
    result.slowest_second = min(per_second.get(i, 0) for i in range(int(window[1] - window[0])))
    latencies = [a - s for s, a in created]
    result.p50_ms = 1000 * percentile(latencies, 0.50)
    result.p99_ms = 1000 * percentile(latencies, 0.99)
    return result


# -- what a 201 promises -----------------------------------------------------------------------

async def check_promises(api: ApiServer, load: Load, database_url: str) -> list[str]:
    """Problems found (none: every promise held)."""
    problems = []
    created = {key: run_id for _, _, status, key, run_id in load.samples if status == 201}
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            stored: dict[str, str] = dict(conn.execute(sa.text(
                "SELECT idempotency_key, id FROM runs WHERE saga = :saga"), {"saga": SAGA}).all())
            steps = conn.execute(sa.text(
                "SELECT count(*) FROM steps WHERE run_id = ANY(:ids)"),
                {"ids": list(created.values())}).scalar_one()
    finally:
        engine.dispose()
    missing = [key for key, run_id in created.items() if stored.get(key) != run_id]
    if missing:
        problems.append(f"{len(missing)} runs answered 201 are not in the saga log as answered")
    if steps != len(created):  # bench_five queues its first step only
        problems.append(f"{len(created)} runs answered 201 have {steps} step rows, not one each")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for key, run_id in list(created.items())[:REPLAYED]:
            async with session.post(load.url, data=load.body,
                                    headers={**load.headers, "Idempotency-Key": key}) as response:
                body = await response.json()
                if response.status != 200 or body.get("id") != run_id:
                    problems.append(f"key {key} again: {response.status} {body.get('id')}, "
                                    f"not 200 {run_id}")
        for bad in (b'{"input": 5}', b'{"input": {}', b"[]"):
            async with session.post(load.url, data=bad, headers={
                    **load.headers, "Idempotency-Key": uuid.uuid4().hex}) as response:
                if not 400 <= response.status < 500:
                    problems.append(f"bad body {bad!r}: {response.status}, not a 4xx")
    return problems


# -- how soon the first step runs -----------------------------------------------------------

def first_step_latency(api: ApiServer, db: Database, folder: Path, tree: Path | None,
                       env: dict[str, str], runs: int) -> list[float]:
    """ms from a run's commit to its first step running (both by the database's clock), for
    runs started one at a time with a real worker idle and waiting: the publish after the
    201 included, the queue of a loaded server not."""
    import requests

    argv = [sys.executable, *_module(tree), "worker", "-c", "1"]
    worker = Worker("worker", argv, {**api.env, **env}, folder)
    engine = sa.create_engine(db.url)
    latencies = []
    try:
        worker.wait_ready()
        headers = {"Authorization": f"Bearer {api.token}"}
        for _ in range(runs):
            response = requests.post(f"{api.url}/v1/sagas/{SAGA}/runs", json={"input": {}},
                                     headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                                     timeout=30)
            assert response.status_code == 201, response.text
            run_id = response.json()["id"]

            def ran(run_id: str = run_id) -> tuple[float] | None:
                with engine.connect() as conn:
                    seconds = conn.execute(sa.text(
                        "SELECT extract(epoch FROM s.started_at - r.created_at) FROM runs r "
                        "JOIN steps s ON s.run_id = r.id AND s.name = 's1' "
                        "WHERE r.id = :id AND s.started_at IS NOT NULL"), {"id": run_id}).scalar()
                return None if seconds is None else (float(seconds),)  # truthy even if 0

            found = wait_for(ran, 30, "the first step to run", 0.01)
            assert found is not None  # wait_for returns only what is truthy
            latencies.append(1000 * found[0])
    finally:
        worker.stop()
        engine.dispose()
    return latencies


def _module(tree: Path | None) -> list[str]:
    """`-m saga.cli`, or the same from another source tree (see ApiServer)."""
    if tree is None:
        return ["-m", "saga.cli"]
    return ["-c", f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
                  "runpy.run_module('saga.cli', run_name='__main__')"]


# -- CPU by kind of process ----------------------------------------------------------------

class Cpu:
    """Cores each kind of process kept busy between `begin` and `end` (others: the rest)."""

    def __init__(self, server_group: int, db: Database) -> None:
        self.group, self.db = server_group, db
        self.backends: set[int] = set()
        self.began: dict[int, tuple[str, int, float]] = {}
        self.machine = 0.0
        self.wall = 0.0

    def _backends(self) -> set[int]:
        with self.db.admin.connect() as conn:
            return set(conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.db.name,)).scalars())

    def begin(self) -> None:
        self.backends = self._backends()
        self.began, self.machine, self.wall = processes(), machine_cpu()[0], time.monotonic()

    def end(self) -> dict[str, float]:
        now, busy, wall = processes(), machine_cpu()[0], time.monotonic() - self.wall
        self.backends |= self._backends()
        totals: dict[str, float] = {}
        for pid, (name, group, cpu) in now.items():
            spent = cpu - (self.began[pid][2] if pid in self.began else 0.0)
            if pid == os.getpid():
                kind = "load generator (this process)"
            elif group == self.group:
                kind = SERVER
            elif name == "postgres" and pid in self.backends:
                kind = POSTGRES
            elif name == "postgres" and _postgres_aux(pid):
                kind = "postgres walwriter/checkpointer/..."
            elif "beam" in name or name.startswith(("erl_", "epmd")):
                kind = "rabbitmq"
            elif name.startswith("redis-server"):
                kind = "redis-server"
            elif name == "py-spy":
                kind = "py-spy"
            else:
                continue
            totals[kind] = totals.get(kind, 0.0) + spent
        totals["others (the rest of the machine)"] = max(0.0, busy - self.machine
                                                         - sum(totals.values()))
        return {kind: spent / wall for kind, spent in totals.items()}


# -- one measurement -----------------------------------------------------------------------

def measure(label: str, args: argparse.Namespace, folder: Path, tree: Path | None = None,
            flame: Path | None = None, settings: dict[str, str] | None = None) -> Result:
    db = Database()
    queue = f"bench-api-{uuid.uuid4().hex[:8]}"
    env = {"SAGA_SAGAS": "bench.sagas", "SAGA_QUEUE": queue,
           "SAGA_RATE_LIMIT_STORAGE": RATE_LIMIT_STORAGE, **dict(args.env), **(settings or {})}
    api = ApiServer(db.url, BROKERS[args.broker], folder, env=env, workers=args.workers,
                    threads=args.threads, tree=tree)
    try:
        with api:
            assert api.process is not None
            load = Load(api.url, {"Authorization": f"Bearer {api.token}",
                                  "Content-Type": "application/json"}, args.concurrency)
            first_step = first_step_latency(api, db, folder, tree, env, args.first_step) \
                if args.first_step else []
            cpu = Cpu(api.process.popen.pid, db)
            spy = _py_spy(api.process.popen.pid, args.warmup, args.seconds, flame) if flame else None

            async def loaded() -> tuple[float, float]:
                async def window_cpu() -> None:
                    await asyncio.sleep(args.warmup)
                    cpu.begin()
                    await asyncio.sleep(args.seconds)
                    result.cpu = cpu.end()

                timer = asyncio.create_task(window_cpu())
                window = await load.run(args.warmup, args.seconds)
                await timer
                return window

            result = Result(label)
            window = asyncio.run(loaded())
            measured = summarize(label, load, window)
            measured.cpu = result.cpu
            measured.first_step_ms = first_step
            if spy is not None:
                spy.wait(args.warmup + args.seconds + 60)
            measured.checks = asyncio.run(check_promises(api, load, db.url))
            return measured
    finally:
        delete_queue(BROKERS[args.broker], queue)
        db.drop()


def _py_spy(pid: int, warmup_s: float, seconds: float, flame: Path) -> subprocess.Popen[bytes]:
    """py-spy on the arbiter and its workers, for the measured window (it starts now and
    waits out the warm-up first)."""
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--subprocesses", "--gil",
            "--rate", "200", "--duration", str(int(seconds)),
            "--format", "raw" if flame.suffix == ".txt" else "flamegraph", "--output", str(flame)]
    delayed = ["sh", "-c", f'sleep {warmup_s}; exec "$@"', "py-spy", *argv]
    return subprocess.Popen(delayed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- the report ------------------------------------------------------------------------------

def report(result: Result) -> None:
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(result.statuses.items()))
    print(f"  {result.label:<8} {result.rate:7.1f} starts/s (slowest second {result.slowest_second})"
          f"  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  [{statuses}]")
    cpu = "  ".join(f"{kind} {cores:.2f}" for kind, cores in
                    sorted(result.cpu.items(), key=lambda kv: -kv[1]))
    print(f"           cores busy: {cpu}  (of {CORES})")
    if result.rate:
        api = result.cpu.get(SERVER, 0.0)
        ours = sum(v for k, v in result.cpu.items() if k in OURS)
        print(f"           CPU per start: saga api {1000 * api / result.rate:.2f} ms, with postgres, "
              f"the broker, redis and this client {1000 * ours / result.rate:.2f} ms: "
              f"{CORES} idle cores would sustain ~{CORES * result.rate / max(ours, 1e-9):.0f}/s")
    if result.first_step_ms:
        ms = result.first_step_ms
        print(f"           run committed -> first step running (one at a time, {len(ms)} runs): "
              f"p50 {percentile(ms, 0.5):.1f} ms, max {max(ms):.1f} ms")
    for problem in result.checks:
        print(f"           BROKEN PROMISE: {problem}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=16, help="starts in flight (16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window (20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="before the window (5)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--broker", choices=sorted(BROKERS), default="rabbitmq")
    parser.add_argument("--workers", type=int, default=None,
                        help="gunicorn workers (default: saga api's, or SAGA_API_WORKERS)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default: saga api's, or SAGA_API_THREADS)")
    parser.add_argument("--env", action="append", default=[], type=lambda s: s.split("=", 1),
                        metavar="SAGA_X=VALUE", help="a setting for the server (repeatable)")
    parser.add_argument("--first-step", type=int, default=0, metavar="N",
                        help="first, N runs one at a time with a worker: commit to first step")
    parser.add_argument("--compare", type=Path, default=None, metavar="TREE",
                        help="also measure this source tree's saga api, alternating")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:SAGA_X=V,...",
                        help="also measure this checkout with these settings (repeatable)")
    parser.add_argument("--flame", type=Path, default=None, metavar="SVG",
                        help="py-spy flame graphs of each server's first repeat")
    args = parser.parse_args()
    atexit.register(Worker.stop_all)
    folder = Path(tempfile.mkdtemp(prefix="bench-api-"))
    trees: list[tuple[str, Path | None, dict[str, str]]] = [("this", None, {})]
    if args.compare is not None:
        trees = [("compare", args.compare.resolve(), {}), *trees]
    for variant in args.variant:
        label, _, pairs = variant.partition(":")
        trees.append((label, None, dict(p.split("=", 1) for p in pairs.split(",") if p)))
    print(f"POST /v1/sagas/{SAGA}/runs, {args.concurrency} in flight, {args.warmup:.0f}s warm-up "
          f"+ {args.seconds:.0f}s measured, broker {args.broker}, logs in {folder}")
    results: dict[str, list[Result]] = {label: [] for label, _, _ in trees}
    for repeat in range(args.repeat):
        order = trees if repeat % 2 == 0 else trees[::-1]
        for label, tree, settings in order:
            flame = None
            if args.flame and repeat == 0:
                flame = args.flame.with_name(f"{args.flame.stem}-{label}{args.flame.suffix}")
            result = measure(label, args, folder, tree, flame, settings)
            results[label].append(result)
            report(result)
    broken = any(r.checks for rs in results.values() for r in rs)
    if args.repeat > 1 or len(trees) > 1:
        print("\n  medians:")
        for label, rs in results.items():
            first = [ms for r in rs for ms in r.first_step_ms]
            print(f"  {label:<8} {statistics.median(r.rate for r in rs):7.1f} starts/s  "
                  f"p50 {statistics.median(r.p50_ms for r in rs):6.1f} ms  "
                  f"p99 {statistics.median(r.p99_ms for r in rs):6.1f} ms"
                  + (f"  first step p50 {percentile(first, 0.5):.1f} ms" if first else ""))
    if args.flame:
        print(f"\n  flame graphs: {args.flame.with_name(args.flame.stem)}-<label>.svg")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
