"""What task events cost: the throughput bench with them off, on, and on with Flower watching.

    python bench/task_events.py [--sagas N] [--brokers rabbitmq,redis] [--repeat R]

Each repeat runs `bench/throughput.py`'s saga measurement (a real `saga worker -c 2`, N runs
of five no-op steps) three times per broker, in a rotating order: SAGA_TASK_EVENTS=off;
on (the default: workers send task events, publishers "task-sent", nobody listens); and
on with a real `saga flower` consuming them. Medians over the repeats; each "on" figure is
also given as a ratio to the "off" run of the same repeat. CPU ms per saga counts the
worker, the bench process (it publishes the first step), PostgreSQL and the broker, not
Flower. Same servers and variables as bench/throughput.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.throughput import BROKERS, Database, Result, Worker, measure_saga, median, ms  # noqa: E402

KINDS = ("off", "on", "on + flower")
LOGIN = ("bench", "bench-only")


def flower(db: Database, broker: str, folder: Path) -> subprocess.Popen[bytes]:
    """A `saga flower` on the bench database's deployment, once it answers."""
    from tests.stack import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_DATABASE_URL": db.url,
           "SAGA_BROKER_URL": BROKERS[broker], "SAGA_FLOWER_BASIC_AUTH": ":".join(LOGIN)}
    log = open(folder / f"flower-{port}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "saga.cli", "flower", "--port", str(port),
                                "--persistent=False", "--max_tasks=100000"], env=env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower exited: {(folder / f'flower-{port}.log').read_text()}")
        try:
            requests.get(f"http://127.0.0.1:{port}/api/tasks", auth=LOGIN, timeout=2)
            return process
        except requests.RequestException:
            time.sleep(0.2)
    raise TimeoutError("flower did not answer within 30 s")


def measure(db: Database, broker: str, kind: str, n: int, folder: Path) -> Result:
    env = {"SAGA_TASK_EVENTS": "off" if kind == "off" else "on"}
    watcher = flower(db, broker, folder) if kind == "on + flower" else None
    try:
        return measure_saga(db, broker, n, folder, extra_env=env)
    finally:
        if watcher is not None:
            os.killpg(watcher.pid, signal.SIGTERM)
            watcher.wait(10)


def cpu_ms(result: Result) -> float:
    """CPU milliseconds of the bench's own processes per saga (cores busy / sagas per second)."""
    return 1000 * result.ours / result.rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    if set(brokers) - BROKERS.keys() or args.sagas < 1 or args.repeat < 1:
        parser.error("brokers: rabbitmq, redis; --sagas and --repeat at least 1")
    results: dict[tuple[str, str], list[Result]] = {(b, k): [] for b in brokers for k in KINDS}
    db = Database()
    try:
        with tempfile.TemporaryDirectory(prefix="saga-bench-events-") as tmp:
            for r in range(args.repeat):
                for broker in brokers:
                    order = KINDS[r % 3:] + KINDS[:r % 3]  # each kind first, once in three
                    for kind in order:
                        result = measure(db, broker, kind, args.sagas, Path(tmp))
                        results[(broker, kind)].append(result)
                        print(f"repeat {r + 1} {broker:<8} {kind:<12} {result.rate:6.1f} sagas/s"
                              f"  p50 {ms(result.p50):>7}  p99 {ms(result.p99):>7}"
                              f"  cpu {cpu_ms(result):5.1f} ms/saga  others {result.others:.2f}"
                              f" cores", flush=True)
    finally:
        Worker.stop_all()
        db.drop()
    print(f"\n{args.sagas} runs of 5 no-op steps, worker -c 2, medians of {args.repeat}")
    print("broker   | events       | sagas/s | vs off | p50     | p99     | cpu ms/saga | vs off")
    for broker in brokers:
        off = results[(broker, "off")]
        for kind in KINDS:
            got = results[(broker, kind)]
            rate = median(g.rate / o.rate for g, o in zip(got, off, strict=True))
            cpu = median(cpu_ms(g) / cpu_ms(o) for g, o in zip(got, off, strict=True))
            print(f"{broker:<8} | {kind:<12} | {median(g.rate for g in got):7.1f} | {rate:5.2f}x"
                  f" | {ms(median(g.p50 for g in got)):>7} | {ms(median(g.p99 for g in got)):>7}"
                  f" | {median(cpu_ms(g) for g in got):11.1f} | {cpu:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
