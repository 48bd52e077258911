"""Another service's Celery worker, knowing nothing of sagas: it runs `remote_service.double`.

Started by the tests as `celery -A tests.remote_service worker -Q <the test's queue>`.
"""

import os

from celery import Celery

app = Celery("remote_service", broker=os.environ["SAGA_BROKER_URL"],
             backend=os.environ["SAGA_RESULT_BACKEND"])
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")


@app.task(name="remote_service.double")
def double(payload: dict) -> dict:
    return {"doubled": payload["input"]["n"] * 2, "key": payload["idempotency_key"]}
