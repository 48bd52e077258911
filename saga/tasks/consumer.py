"""The worker's Celery consumer with quorum queues: Celery's, less native delayed delivery.

Celery adds that step once a worker consumes a quorum queue; it declares 28
`celery_delayed_*` quorum queues and 29 exchanges broker-wide, for messages published with
an ETA or countdown, and warns that the step queue's direct exchange cannot use them. The
saga publishes none: retries and timers wait in PostgreSQL and the sweeper publishes them
when due. Imported by the worker only (Celery's `worker_consumer`).
"""

from __future__ import annotations

from celery.worker.consumer import Consumer


class StepConsumer(Consumer):
    class Blueprint(Consumer.Blueprint):
        default_steps = [step for step in Consumer.Blueprint.default_steps
                         if not step.endswith(":DelayedDelivery")]
