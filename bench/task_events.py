"""What task events cost: `bench/throughput.py --task-events`, under the name it had first.

    python bench/task_events.py [--sagas N] [--brokers rabbitmq,redis] [--repeat R]

The saga with SAGA_TASK_EVENTS=off, on (the default: nobody listens), and on with a real
`saga flower` consuming them, beside the plain Celery chain; see bench/throughput.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.throughput import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--task-events", "--sagas", "300", *sys.argv[1:]]))
