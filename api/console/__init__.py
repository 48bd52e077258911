"""The web console: pages to find, understand and repair runs, served under /ui.

Pages read through the store's read models and act through the same engine calls as the
API (retry, cancel, signal), with the same access rules: a console session is an API
token, kept in a signed, HttpOnly, SameSite cookie.
"""

from __future__ import annotations

import flask

from saga.api.console.blueprint import console

__all__ = ["install"]


def install(app: flask.Flask) -> None:
    """Mount the console on `app` (its page modules register their routes on import)."""
    from saga.api.console import pages  # noqa: F401  (routes register on import)

    app.register_blueprint(console)
