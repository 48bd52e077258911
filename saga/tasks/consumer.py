"""The worker's Celery consumer on RabbitMQ: Celery's, with its task events unconfirmed and,
with quorum queues, less native delayed delivery.

Its task and worker events go on a connection without publisher confirms: each batch's
confirm cost the worker's main loop a broker round trip, between handing messages to the
pool, for events Celery never confirms elsewhere. Step messages stay confirmed.

Celery adds delayed delivery once a worker consumes a quorum queue; it declares 28
`celery_delayed_*` quorum queues and 29 exchanges broker-wide, for messages published with
an ETA or countdown, and warns that the step queue's direct exchange cannot use them. The
saga publishes none: retries and timers wait in PostgreSQL and the sweeper publishes them
when due. Imported by the worker only (Celery's `worker_consumer`).
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer


class StepConsumer(Consumer):
    class Blueprint(Consumer.Blueprint):
        # Celery includes the step with quorum queues only: without them, dropping it is moot.
        default_steps = [step for step in Consumer.Blueprint.default_steps
                         if not step.endswith(":DelayedDelivery")]

    def connection_for_write(self, url: str | None = None, heartbeat: float | None = None) -> Any:
        """The events' connection (Celery's Events step is its only caller), unconfirmed."""
        options = {**self.app.conf.broker_transport_options, "confirm_publish": False}
        return self.ensure_connected(self.app.connection_for_write(
            url=url, heartbeat=heartbeat, transport_options=options))
