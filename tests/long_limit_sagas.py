"""A saga whose step may run two hours: longer than a Redis visibility timeout of one hour."""

from datetime import timedelta

from saga import Saga, Step
from tests.sagas import record

long_haul = Saga("long_haul", steps=[Step("long", record, timeout=timedelta(hours=2))])
