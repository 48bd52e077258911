"""Named crash points for the fault-injection tests; inert unless SAGA_FAULTS arms them.

`SAGA_FAULTS="after_commit:reserve_inventory:once,before_effect:charge_card"` makes this
process SIGKILL itself at those points (`:once` across all processes sharing
SAGA_FAULTS_DIR, which then holds a marker file `fault-<point>-<step>`). The points:
after_start_commit:<saga>, before_effect / after_effect / before_commit / after_commit
:<step> or :<step>.compensate. A crash point costs two checks when nothing is armed.

In one process, `injected(hook)` calls `hook(point, step)` at every crash point instead of
killing anything: the saga test kit (`saga.testing.kit`) raises from it to fail or crash
an attempt in place.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_ARMED = frozenset(p.strip() for p in os.environ.get("SAGA_FAULTS", "").split(",") if p.strip())
Hook = Callable[[str, str | None], None]
_hook: Hook | None = None


def crash_point(point: str, step: str | None = None) -> None:
    if _hook is not None:
        _hook(point, step)
    if not _ARMED:
        return
    for name in (point, f"{point}:{step}"):
        if name in _ARMED or (f"{name}:once" in _ARMED and _first_time(name)):
            os.kill(os.getpid(), signal.SIGKILL)


def _first_time(name: str) -> bool:
    folder = os.environ.get("SAGA_FAULTS_DIR") or tempfile.gettempdir()
    try:
        fd = os.open(os.path.join(folder, f"fault-{name.replace(':', '-')}"),
                     os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@contextmanager
def injected(hook: Hook) -> Iterator[None]:
    """Call `hook(point, step)` at every crash point of this process while the block runs."""
    global _hook
    previous, _hook = _hook, hook
    try:
        yield
    finally:
        _hook = previous
