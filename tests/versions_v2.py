"""Versions 1 and 2 of `versioned` loaded side by side, as after deploying version 2."""

from saga import Saga, Step, WaitForSignal
from tests.sagas import record
from tests.versions_v1 import versioned_v1  # noqa: F401  (still loaded for its runs)

versioned_v2 = Saga("versioned", version=2, steps=[
    Step("a", record), Step("c", record), WaitForSignal("go"), Step("b", record)])
