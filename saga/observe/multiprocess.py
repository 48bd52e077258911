"""Counting across a process pool: prometheus-client's multiprocess mode, chosen before it loads.

prometheus_client fixes its mode when it is first imported, so a command whose processes
are scraped as one (`saga worker`'s pool, `saga api`'s gunicorn workers) calls
`count_in_files()` before anything imports it: each process then counts into its own
files in one folder, and a scrape merges them (`saga.observe.metrics.registry`). This
module imports nothing of prometheus_client itself.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["ENV", "count_in_files", "alive"]

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "saga-metrics-"  # then the creating pid: its folder is an orphan once that is gone


def count_in_files() -> str:
    """The folder this process and its children count into: PROMETHEUS_MULTIPROC_DIR if
    set (it must exist; wiping it between runs is the caller's), else a fresh temporary
    one, removed when this process exits."""
    if "prometheus_client" in sys.modules and not os.environ.get(ENV):
        raise RuntimeError("prometheus_client was imported before count_in_files(): "
                           "its metrics would not be merged across processes")
    path = os.environ.get(ENV)
    if path:
        if not os.path.isdir(path):
            raise ValueError(f"{ENV}={path!r} is not a directory: create it, or unset it "
                             "for a fresh temporary one")
        return path
    _remove_orphans()
    creator = os.getpid()
    path = os.environ[ENV] = tempfile.mkdtemp(prefix=f"{PREFIX}{creator}-")

    def remove() -> None:
        if os.getpid() == creator:  # a forked child (gunicorn's) runs these hooks too
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


def _remove_orphans() -> None:
    """Remove the folders of commands that ended without their exit hook (SIGKILL, OOM)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = folder.name.removeprefix(PREFIX).partition("-")[0]
        if pid.isdigit() and not alive(int(pid)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (as far as this user can tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True
