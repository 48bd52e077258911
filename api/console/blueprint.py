"""The console's Flask blueprint, under /ui; each page module adds its routes to it."""

from __future__ import annotations

import flask

console = flask.Blueprint("console", __name__, url_prefix="/ui", template_folder="templates",
                          static_folder="static", static_url_path="/static")
