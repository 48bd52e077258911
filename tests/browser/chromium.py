"""Debian's chromium for the browser tests, driven by Playwright (which downloads no browser).

Without either, the tests are skipped with what to install; with CI=true they fail.
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import IN_CI

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Headless and quiet: no GPU, no QUIC, and none of Chromium's own calls home.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def missing() -> list[str]:
    """What the browser tests need and this machine lacks, with how to install it."""
    lacks = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        lacks.append("Playwright (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        lacks.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    return lacks


def need_browser() -> None:
    """Skip the calling test (or, in CI, fail it) unless Playwright and chromium are here."""
    lacks = missing()
    if not lacks:
        return
    message = "the browser tests need " + " and ".join(lacks)
    if IN_CI:
        pytest.fail(f"CI runs the browser tests: {message}", pytrace=False)
    pytest.skip(message)
