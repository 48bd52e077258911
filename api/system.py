"""The parts this app serves (`saga.system.System`), for the views to take what they need."""

from __future__ import annotations

import flask

from saga.system import System

KEY = "saga"


def install(app: flask.Flask, system: System) -> None:
    app.extensions[KEY] = system


def current() -> System:
    """The System of the app handling this request."""
    system: System = flask.current_app.extensions[KEY]
    return system
