"""Fixtures for the console in a real browser: one stack per module, Chromium, a page.

One real `saga api` (SAGA_AUTH on) with a worker and a sweeper on PostgreSQL and one
broker serves every test of a module (each test starts its own runs); Debian's chromium,
driven by Playwright, which downloads no browser. Without chromium or Playwright the tests
are skipped with what to install; with CI=true they fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.auth import create_token
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS, need_browser
from tests.conftest import BROKERS, need, template_copies
from tests.stack import Stack

TIMEOUT_MS = 10_000  # what a page may take to show what a test waits for
SAGAS = "examples.fulfillment,tests.browser.sagas"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def console_stack(pg_template: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API, worker and sweeper on a fresh database and one broker, for a whole module."""
    broker = BROKERS["redis"]
    need("redis", broker)
    with template_copies(pg_template, "saga_ui") as make, \
            Stack(make(), broker, tmp_path_factory.mktemp("console"), sagas=SAGAS) as stack:
        with ThreadPoolExecutor(2) as pool:  # each waits until ready: together, not in turn
            starting = [pool.submit(stack.api), pool.submit(stack.worker)]
        for started in starting:
            started.result()
        stack.sweeper()
        yield stack


@pytest.fixture(scope="module")
def sessions() -> dict[str, list[Any]]:
    """Session cookies by token, once a test has signed in through the form (see sign_in)."""
    return {}


@pytest.fixture(scope="module")
def tokens(console_stack: Stack) -> dict[str, str]:
    """An admin token named "ada" and a read-only one named "viewer"."""
    return {"admin": create_token(console_stack.db, "admin", "ada"),
            "read": create_token(console_stack.db, "read", "viewer")}


@pytest.fixture
def foreign_requests() -> list[str]:
    """URLs the page asked of any host but the app's; the `page` fixture fails on any."""
    return []


@pytest.fixture
def page(browser: Any, console_stack: Stack, foreign_requests: list[str]) -> Iterator[Any]:
    """A fresh page (no cookies) that records, and refuses, requests to other hosts."""
    own = urlparse(console_stack.base).netloc

    def watch(request: Any) -> None:
        url = urlparse(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != own:
            foreign_requests.append(request.url)

    context = browser.new_context(base_url=console_stack.base,
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    # Refused, so a page that would work only with internet access fails here too.
    context.route(lambda url: urlparse(url).netloc not in ("", own),
                  lambda route: route.abort())
    opened = context.new_page()
    opened.on("request", watch)
    yield opened
    context.close()
    if foreign_requests:
        pytest.fail(f"the console asked other hosts: {sorted(set(foreign_requests))}")
