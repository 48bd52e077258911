"""Where the time goes: CPU by process, and (with --instrument) time per store call and statement.

    python bench/profile_saga.py [--sagas N] [--brokers rabbitmq,redis] [--instrument] [--chain]
                                 [--py-spy]

Runs the same measurement as bench/throughput.py once, and around the measured batch
reads every process's CPU time from /proc: the worker's process group, this process
(which starts the sagas), the PostgreSQL backends of the bench database, the broker, and
everything else on the machine (other people's work: the machine is shared). With
--instrument the worker is `bench.instrumented_worker` (the same CLI with timers) and
each worker child's totals per call are printed per saga step. With --py-spy (needs
`pip install py-spy`) the worker children are sampled and the hottest frames printed.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import throughput as tp  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


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


class CpuMeter:
    """CPU seconds per kind of process between "begin" and "end" (a measure_* hook)."""

    def __init__(self, db: tp.Database | None) -> None:
        self.db = db
        self.began: dict[int, tuple[str, int, float]] = {}
        self.wall = 0.0
        self.by_kind: dict[str, float] = {}
        self.bench_pids: set[int] = set()

    def __call__(self, phase: str, worker: tp.Worker) -> None:
        if phase == "begin":
            if self.db is not None:
                with self.db.admin.connect() as conn:
                    self.bench_pids = set(conn.exec_driver_sql(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s",
                        (self.db.name,)).scalars())
            self.began, self.wall = processes(), time.monotonic()
            return
        self.wall = time.monotonic() - self.wall
        if self.db is not None:  # backends opened during the batch count too
            with self.db.admin.connect() as conn:
                self.bench_pids |= set(conn.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s",
                    (self.db.name,)).scalars())
        totals: dict[str, float] = collections.defaultdict(float)
        for pid, (name, group, cpu) in processes().items():
            spent = cpu - (self.began[pid][2] if pid in self.began else 0.0)
            if pid == os.getpid():
                kind = "bench process (starts runs, polls)"
            elif group == worker.popen.pid:
                kind = "worker (parent + 2 children)"
            elif name == "postgres" and pid in self.bench_pids:
                kind = "postgres backends of the bench db"
            elif name == "postgres":
                kind = "postgres other (walwriter, other dbs)"
            elif name.startswith(("beam", "erl_", "1_scheduler", "2_scheduler")) or "beam" in name:
                kind = "rabbitmq"
            elif name.startswith("redis-server"):
                kind = "redis-server"
            else:
                kind = "everything else on the machine"
            totals[kind] += spent
        self.by_kind = dict(totals)

    def report(self, label: str, n: int) -> None:
        print(f"\n  CPU during the measured batch of {label} ({self.wall:.1f}s wall, "
              f"{2 * self.wall:.1f} core-seconds available):")
        for kind, spent in sorted(self.by_kind.items(), key=lambda kv: -kv[1]):
            print(f"    {kind:<40} {spent:6.2f}s  {100 * spent / (2 * self.wall):5.1f}%  "
                  f"{1000 * spent / (n * tp.STEPS):6.2f} ms/step")


def report_stats(folder: Path, steps: int) -> None:
    import json

    merged: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    alive = cpu = 0.0
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        alive += data["alive_s"]
        cpu += data["cpu_s"]
        for name, (calls, seconds) in data["stats"].items():
            merged[name][0] += calls
            merged[name][1] += seconds
    print(f"\n  worker children (warm-up included; per saga step = /{steps}); "
          f"children CPU {cpu:.1f}s over {alive:.1f}s alive:")
    print(f"    {'what':<48} {'calls/step':>10} {'ms/call':>8} {'ms/step':>8}")
    for name, (calls, seconds) in sorted(merged.items(), key=lambda kv: -kv[1][1]):
        print(f"    {name:<48} {calls / steps:10.2f} {1000 * seconds / max(calls, 1):8.3f} "
              f"{1000 * seconds / steps:8.3f}")


def py_spy(worker: tp.Worker, seconds: float, out: Path) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("  (py-spy is not installed; pip install py-spy)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(worker.popen.pid), "--subprocesses",
                             "--duration", str(int(seconds)), "--rate", "200", "--format", "raw",
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def report_py_spy(path: Path, top: int = 30) -> None:
    if not path.exists():
        print("  (py-spy wrote nothing: is ptrace allowed?)")
        return
    inclusive: dict[str, int] = collections.Counter()
    own: dict[str, int] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"\n  py-spy, worker processes, {total} samples; inclusive share (frames in saga/ "
          "and the libraries):")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {frame[:120]}")
    print("  self time:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:15]:
        print(f"    {100 * n / total:5.1f}%  {frame[:120]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    parser.add_argument("--instrument", action="store_true", help="time store calls and statements")
    parser.add_argument("--chain", action="store_true", help="also profile the chain baseline")
    parser.add_argument("--py-spy", action="store_true", help="sample the worker with py-spy")
    args = parser.parse_args()
    db = tp.Database()
    try:
        with tempfile.TemporaryDirectory(prefix="saga-profile-") as tmp:
            folder = Path(tmp)
            for broker in [b.strip() for b in args.brokers.split(",") if b.strip()]:
                stats = folder / f"stats-{broker}"
                stats.mkdir()
                meter = CpuMeter(db)
                spy: dict[str, Any] = {}

                def hook(phase: str, worker: tp.Worker, meter: CpuMeter = meter,
                         spy: dict[str, Any] = spy, broker: str = broker) -> None:
                    meter(phase, worker)
                    if args.py_spy and phase == "begin":
                        spy["path"] = folder / f"py-spy-{broker}.txt"
                        spy["proc"] = py_spy(worker, 600, spy["path"])
                    if phase == "end" and spy.get("proc") is not None:
                        spy["proc"].send_signal(2)  # SIGINT: py-spy writes what it has
                        try:
                            spy["proc"].wait(30)
                        except subprocess.TimeoutExpired:
                            spy["proc"].kill()

                module = "bench.instrumented_worker" if args.instrument else "saga.cli"
                result = tp.measure_saga(db, broker, args.sagas, folder, module=module,
                                         extra_env={"BENCH_STATS_DIR": str(stats)}, hook=hook)
                print(f"\n== {broker}")
                tp.print_result(f"{broker} saga", result)
                meter.report(f"{args.sagas} sagas", args.sagas)
                if args.instrument:
                    report_stats(stats, (tp.WARMUP + args.sagas) * tp.STEPS)
                if args.py_spy and spy.get("path"):
                    report_py_spy(spy["path"])
                if args.chain:
                    chain_meter = CpuMeter(None)
                    result = tp.measure_chain(broker, args.sagas, folder, hook=chain_meter)
                    tp.print_result(f"{broker} chain", result)
                    chain_meter.report(f"{args.sagas} chains", args.sagas)
    finally:
        tp.Worker.stop_all()
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
