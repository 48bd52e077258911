"""Durable sagas for microservices on Celery and PostgreSQL.

    from saga import Saga, Step, Parallel, Retry

    signup = Saga("signup", steps=[
        Step("create_account", create_account, compensate=delete_account),
        Parallel(Step("send_welcome", send_welcome), Step("add_to_crm", add_to_crm)),
    ])
"""

from saga.definitions import (
    Parallel,
    RemoteTask,
    Retry,
    Saga,
    Step,
    Verified,
    Wait,
    WaitForSignal,
)
from saga.errors import DefinitionError, LeaseLost, NonRetryable, SagaError
from saga.schedules.cron import Schedule
from saga.settings import Settings
from saga.worker.context import StepContext

__all__ = [
    "Saga", "Step", "Parallel", "Retry", "RemoteTask", "Wait", "WaitForSignal", "Verified",
    "StepContext",
    "Schedule", "NonRetryable", "LeaseLost", "SagaError", "DefinitionError", "Settings",
]
