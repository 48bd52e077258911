"""GET /metrics: this API's counts (merged across its gunicorn workers) and the log's gauges.

Prometheus' text format, outside /v1 and its OpenAPI document. With SAGA_AUTH=on it needs
a token of the `read` scope, as reading runs does: the API's port is the one a deployment
publishes, and the counts tell its business (which sagas, how many, how often they fail).
Prometheus sends the token from a file (`authorization: {credentials_file: …}`, see
deploy/prometheus/prometheus.yml). The worker's and the sweeper's endpoints are not
published; they have no token.
"""

from __future__ import annotations

import flask
from prometheus_client.exposition import choose_encoder

from saga.api import auth
from saga.observe.metrics import DatabaseGauges, registry
from saga.system import System

__all__ = ["blp", "install"]

blp = flask.Blueprint("metrics", __name__)
KEY = "saga_metrics"


def install(app: flask.Flask, system: System) -> None:
    """Serve /metrics: the counters, and the saga log's gauges read once per scrape."""
    app.extensions[KEY] = registry(DatabaseGauges(system.store, system.registry))
    app.register_blueprint(blp)


@blp.before_request
def _needs_read() -> flask.Response | None:
    # auth.py guards /v1 and leaves routes outside it to their blueprint: here the same
    # token resolution and the same 401 challenges. Any live token will do: every scope
    # includes `read`.
    if flask.current_app.config["SAGA_AUTH"] == "off":
        return None
    token = auth._bearer(flask.request.headers.get("Authorization", ""))
    if token is None:
        return auth._unauthorized("/metrics needs an `Authorization: Bearer <token>` header "
                                  "with a token of the 'read' scope (`saga token create "
                                  "prometheus --scope read`).", invalid=False)
    principal = flask.current_app.extensions[auth.TOKENS].resolve(token)
    if principal is None:
        return auth._unauthorized("The bearer token is not valid: it is unknown or revoked.",
                                  invalid=True)
    flask.g.principal = principal
    return None


@blp.get("/metrics")
def scrape() -> flask.Response:
    """The metrics, as Prometheus (or OpenMetrics, if asked) text."""
    encode, content_type = choose_encoder(flask.request.headers.get("Accept", ""))
    body = encode(flask.current_app.extensions[KEY])
    return flask.Response(body, headers={"Content-Type": content_type})
