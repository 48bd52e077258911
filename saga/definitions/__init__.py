"""The saga DSL: Saga, Step, Parallel, Retry and RemoteTask, validated when built.

A saga is a named, versioned graph of steps. Sequences are lists, parallel groups are
`Parallel(...)`; both compile to one dependency graph (`Saga.graph`) that the pure plan
in `saga.state` walks. A bad definition raises `DefinitionError` naming the step, so it
fails when the module defining it is imported.

    fulfillment = Saga("order_fulfillment", version=1, input=OrderSchema, steps=[
        Step("reserve_inventory", reserve, compensate=release),
        Step("charge_card", charge, compensate=refund, retry=Retry(attempts=5)),
        Parallel(
            Step("create_shipment", ship, compensate=cancel_shipment),
            Step("email_warehouse", email_warehouse),
        ),
    ])
"""

from __future__ import annotations

from saga.definitions.retry import DEFAULT_COMPENSATE_RETRY, Retry
from saga.definitions.saga import Node, Parallel, Saga
from saga.definitions.steps import (
    Action,
    OnTimeout,
    RemoteTask,
    Step,
    Verified,
    Wait,
    WaitForSignal,
    resolve_action,
)
from saga.definitions.waits import OnSignalTimeout, Signal, Timer

__all__ = ["Saga", "Step", "Parallel", "Retry", "RemoteTask", "Wait", "WaitForSignal", "Timer",
           "Signal", "Node", "Action", "resolve_action", "DEFAULT_COMPENSATE_RETRY", "OnTimeout",
           "OnSignalTimeout", "Verified"]
