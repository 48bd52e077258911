"""The loaded saga definitions: versions, step graphs and how many runs each has in flight."""

from __future__ import annotations

from saga.api.auth import requires
from saga.api.parsing import Blueprint
from saga.api.schemas import SagaListSchema
from saga.api.system import current

blp = Blueprint("sagas", __name__, description="The saga definitions this process has loaded")


@blp.get("/sagas")
@requires("read")
@blp.response(200, SagaListSchema)
def list_sagas():
    """Every loaded saga, each version with its steps and runs in flight"""
    system = current()
    return {"sagas": system.registry.describe(system.store.active_versions())}
