"""The sagas of `bench/waiting.py`: a no-op step, then a 30-day wait (a timer or a signal).

Loaded by the bench's worker and sweeper via SAGA_SAGAS=bench.waiting_sagas.
"""

from __future__ import annotations

from datetime import timedelta

from saga import Saga, Step, StepContext
from saga.definitions import Wait, WaitForSignal

THIRTY_DAYS = timedelta(days=30)
TIMER_SAGA, TIMER_STEP = "bench_wait_timer", "cool_off"
SIGNAL_SAGA, SIGNAL_STEP = "bench_wait_signal", "label"


def noop(ctx: StepContext) -> None:
    return None


bench_wait_timer = Saga(TIMER_SAGA, steps=[
    Step("prepare", noop),
    Wait(TIMER_STEP, duration=THIRTY_DAYS),
])

bench_wait_signal = Saga(SIGNAL_SAGA, steps=[
    Step("prepare", noop),
    WaitForSignal(SIGNAL_STEP, timeout=THIRTY_DAYS),
])
