"""The HTTP API's app factory: `create_app(settings)` mounts the /v1 blueprints on Flask.

    app = create_app(Settings.from_env())
    app.run()   # GET /v1/openapi.json describes every endpoint
"""

from __future__ import annotations

import http
import importlib
from typing import Any

import flask
import flask_smorest
from werkzeug.exceptions import HTTPException

from saga.api import (
    auth,
    console,
    control,
    health,
    metrics,
    problems,
    publisher,
    runs,
    sagas,
    schedules,
    tokens,
)
from saga.api import system as saga_system
from saga.settings import Settings
from saga.system import System, build

__all__ = ["create_app"]

BLUEPRINTS = (runs.blp, control.blp, schedules.blp, sagas.blp, tokens.blp, health.blp)


class ProblemApi(flask_smorest.Api):
    """flask-smorest's Api, answering and documenting its errors as problem details."""

    ERROR_SCHEMA = problems.ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> flask.Response:
        return problems.from_http_exception(error)

    def _register_responses(self) -> None:
        # Replaces flask-smorest's version (same components) only to document the error
        # responses as application/problem+json rather than application/json.
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["content"] = {problems.MEDIA_TYPE: {"schema": self.ERROR_SCHEMA}}
            self.spec.components.response(status.name, response, lazy=True)
        self.spec.components.response("DEFAULT_ERROR", {
            "description": "Default error response",
            "content": {problems.MEDIA_TYPE: {"schema": self.ERROR_SCHEMA}},
        }, lazy=True)


def create_app(settings: Settings | None = None, system: System | None = None) -> flask.Flask:
    """The API for one process; `system` defaults to `saga.system.build(settings)`."""
    settings = settings if settings is not None else Settings.from_env()
    system = system if system is not None else build(settings)
    app = flask.Flask("api")
    app.config.update(
        API_TITLE="Saga orchestrator",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/v1",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        API_SPEC_OPTIONS=auth.spec_options(),
    )
    saga_system.install(app, system)
    app.extensions[publisher.KEY] = publisher.for_broker(settings.broker_url)
    api = ProblemApi(app)
    problems.install(app)
    auth.install(app, settings, system)
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint, url_prefix="/v1")
    metrics.install(app, system)  # GET /metrics, outside /v1 and its OpenAPI document
    console.install(app)  # the web console under /ui, outside the OpenAPI document
    for name in settings.sagas:
        init_app = getattr(importlib.import_module(name), "init_app", None)
        if callable(init_app):
            init_app(app, system)
    return app
