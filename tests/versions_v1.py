"""Version 1 of the `versioned` saga, as first deployed."""

from saga import Saga, Step, WaitForSignal
from tests.sagas import record

versioned_v1 = Saga("versioned", version=1, steps=[
    Step("a", record), WaitForSignal("go"), Step("b", record)])
