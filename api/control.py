"""Steering runs from outside: signals, cancellation."""

from __future__ import annotations

from api.parsing import Blueprint

blp = Blueprint("control", __name__, description="Send signals to runs and cancel them")
