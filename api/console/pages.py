"""Imports every page module, so each registers its routes on the console blueprint."""

# One plain import per line, in name order, so each page module adds its own line.
import saga.api.console.overview  # noqa: F401
import saga.api.console.run  # noqa: F401
import saga.api.console.runs  # noqa: F401
import saga.api.console.sagas  # noqa: F401
import saga.api.console.schedules  # noqa: F401
import saga.api.console.session  # noqa: F401
