"""The benchmark saga: five sequential no-op steps, loaded by the worker via SAGA_SAGAS."""

from __future__ import annotations

from saga import Saga, Step, StepContext

STEPS = 5


def noop(ctx: StepContext) -> None:
    return None


bench_five = Saga("bench_five", steps=[Step(f"s{i}", noop) for i in range(1, STEPS + 1)])
