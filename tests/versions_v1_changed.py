"""Version 1 of `versioned` changed in place: a new step under the same version number."""

from saga import Saga, Step, WaitForSignal
from tests.sagas import record

versioned_v1 = Saga("versioned", version=1, steps=[
    Step("a", record), Step("sneaked_in", record), WaitForSignal("go"), Step("b", record)])
