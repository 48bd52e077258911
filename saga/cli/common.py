"""What every `saga` command shares: settings from the environment, the assembled system."""

from __future__ import annotations

import click

from saga.settings import Settings


def settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def system(settings: Settings):
    from saga.errors import SagaError
    from saga.system import build

    try:
        return build(settings)
    except (SagaError, ImportError) as exc:
        raise click.ClickException(f"cannot load the sagas in SAGA_SAGAS: {exc}") from None


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]
