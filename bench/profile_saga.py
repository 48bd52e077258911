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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import throughput as tp  # noqa: E402


def report_stats(folder: Path, steps: int) -> None:
    import json

    merged: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    alive = cpu = 0.0
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        alive += data["alive_s"]
        cpu += data["cpu_s"]
        for name, (calls, seconds, cpu_s) in data["stats"].items():
            merged[name][0] += calls
            merged[name][1] += seconds
            merged[name][2] += cpu_s
    print(f"\n  worker children (warm-up included; per saga step = /{steps}); "
          f"children CPU {cpu:.1f}s over {alive:.1f}s alive:")
    print(f"    {'what':<48} {'calls/step':>10} {'ms/call':>8} {'ms/step':>8} {'cpu ms/step':>11}")
    for name, (calls, seconds, cpu_s) in sorted(merged.items(), key=lambda kv: -kv[1][1]):
        print(f"    {name:<48} {calls / steps:10.2f} {1000 * seconds / max(calls, 1):8.3f} "
              f"{1000 * seconds / steps:8.3f} {1000 * cpu_s / steps:11.3f}")


def py_spy(worker: tp.Worker, seconds: float, out: Path,
           format: str = "raw") -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("  (py-spy is not installed; pip install py-spy)")
        return None
    return subprocess.Popen([exe, "record", "--pid", str(worker.popen.pid), "--subprocesses",
                             "--duration", str(int(seconds)), "--rate", "200", "--format", format,
                             "--output", str(out), "--nonblocking", "--gil"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def report_cprofile(folder: Path, steps: int, top: int = 35) -> None:
    """The worker children's cProfile totals: the Python functions that cost the most CPU."""
    import pstats

    files = [str(p) for p in folder.glob("*.prof")]
    if not files:
        print("  (no cProfile output)")
        return
    stats = pstats.Stats(*files)
    runs = [calls for (file, _l, func), (_cc, calls, *_rest) in stats.stats.items()
            if func == "run_step" and file.endswith("worker/runner.py")]
    steps = sum(runs) or steps  # the profile is dumped every 50 tasks: count what it saw
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():
        short = file.split("site-packages/")[-1].split("/work/main/")[-1]
        rows.append((tottime, cumtime, calls, f"{func} ({short}:{line})"))
    print(f"\n  cProfile of the worker children (under the profiler, so slower); per step = /{steps}")
    print(f"    {'own ms/step':>11} {'cum ms/step':>11} {'calls/step':>10}  function")
    for tottime, cumtime, calls, name in sorted(rows, reverse=True)[:top]:
        print(f"    {1000 * tottime / steps:11.3f} {1000 * cumtime / steps:11.3f} "
              f"{calls / steps:10.1f}  {name[:100]}")
    print("  by cumulative time:")
    for tottime, cumtime, calls, name in sorted(rows, key=lambda r: -r[1])[:top]:
        print(f"    {1000 * tottime / steps:11.3f} {1000 * cumtime / steps:11.3f} "
              f"{calls / steps:10.1f}  {name[:100]}")


def report_py_spy(path: Path, top: int = 40) -> None:
    """Shares of the samples taken inside a step task (below Worker.run_step).

    Sampled with --gil: only a thread holding the GIL counts, so waiting on a socket
    (psycopg, the broker) does not: this is roughly where the worker's CPU goes.
    """
    if not path.exists():
        print("  (py-spy wrote nothing: is ptrace allowed?)")
        return
    inclusive: dict[str, int] = collections.Counter()
    own: dict[str, int] = collections.Counter()
    total = in_task = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        task = [i for i, f in enumerate(frames) if f.startswith("Worker.run_step")]
        if not task:
            continue
        in_task += n
        below = frames[task[0]:]
        own[below[-1]] += n
        for frame in set(below):
            inclusive[frame] += n
    print(f"\n  py-spy --gil (CPU, not waiting): {total} samples of the worker processes, "
          f"{in_task} inside a step task; shares of the latter, inclusive:")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / max(in_task, 1):5.1f}%  {frame[:110]}")
    print("  self time:")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:20]:
        print(f"    {100 * n / max(in_task, 1):5.1f}%  {frame[:110]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=300)
    parser.add_argument("--brokers", default="rabbitmq,redis")
    parser.add_argument("--instrument", action="store_true", help="time store calls and statements")
    parser.add_argument("--chain", action="store_true", help="also profile the chain baseline")
    parser.add_argument("--py-spy", action="store_true", help="sample the worker with py-spy")
    parser.add_argument("--flame", type=Path, default=None, metavar="SVG",
                        help="with --py-spy: write the worker's flame graph (SVG) there instead "
                             "of printing the hottest frames")
    parser.add_argument("--cprofile", action="store_true",
                        help="with --instrument: cProfile the worker children")
    parser.add_argument("--experiments", default="",
                        help="with --instrument: what-ifs, e.g. no_preping,py_clock,no_heartbeat "
                             "(see bench/instrumented_worker.py)")
    args = parser.parse_args()
    db = tp.Database()
    try:
        with tempfile.TemporaryDirectory(prefix="saga-profile-") as tmp:
            folder = Path(tmp)
            for broker in [b.strip() for b in args.brokers.split(",") if b.strip()]:
                stats = folder / f"stats-{broker}"
                stats.mkdir()
                meter = tp.CpuMeter(db)
                spy: dict[str, Any] = {}

                def hook(phase: str, worker: tp.Worker, meter: tp.CpuMeter = meter,
                         spy: dict[str, Any] = spy, broker: str = broker) -> None:
                    meter(phase, worker)
                    if args.py_spy and phase == "begin":
                        if args.flame is not None:
                            spy["path"] = args.flame.with_stem(f"{args.flame.stem}-{broker}")
                        else:
                            spy["path"] = Path(tempfile.gettempdir()) / f"saga-py-spy-{broker}.txt"
                        spy["proc"] = py_spy(worker, 600, spy["path"],
                                             "flamegraph" if args.flame is not None else "raw")
                    if phase == "end" and spy.get("proc") is not None:
                        spy["proc"].send_signal(2)  # SIGINT: py-spy writes what it has
                        try:
                            spy["proc"].wait(30)
                        except subprocess.TimeoutExpired:
                            spy["proc"].kill()

                module = "bench.instrumented_worker" if args.instrument else "saga.cli"
                result = tp.measure_saga(db, broker, args.sagas, folder, module=module,
                                         extra_env={"BENCH_STATS_DIR": str(stats),
                                                    "BENCH_EXPERIMENTS": args.experiments,
                                                    "BENCH_CPROFILE": "1" if args.cprofile else ""},
                                         hook=hook)
                print(f"\n== {broker}")
                tp.print_result(f"{broker} saga", result)
                meter.report(f"{args.sagas} sagas", args.sagas)
                if args.instrument:
                    report_stats(stats, (tp.WARMUP + args.sagas) * tp.STEPS)
                if args.instrument and args.cprofile:
                    report_cprofile(stats, (tp.WARMUP + args.sagas) * tp.STEPS)
                if args.py_spy and spy.get("path") and args.flame is not None:
                    print(f"\n  flame graph of the worker: {spy['path']}")
                elif args.py_spy and spy.get("path"):
                    report_py_spy(spy["path"])
                if args.chain:
                    chain_meter = tp.CpuMeter()
                    result = tp.measure_chain(broker, args.sagas, folder, hook=chain_meter)
                    tp.print_result(f"{broker} chain", result)
                    chain_meter.report(f"{args.sagas} chains", args.sagas)
    finally:
        tp.Worker.stop_all()
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
