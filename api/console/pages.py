"""Imports every page module, so each registers its routes on the console blueprint."""

from saga.api.console import session  # noqa: F401
