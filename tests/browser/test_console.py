"""The web console in Chromium, against a real `saga api`, worker and sweeper (SAGA_AUTH on).

A support engineer signs in with a token, finds an order by its id, reads why it was
compensated, and repairs runs: retries a failed one, cancels a waiting one, sends the
signal it waits for. Every page loads only from the app itself (the `page` fixture fails
a test whose page asks any other host). Each test waits on what the page shows, with
Playwright's `expect` and its deadline, never a sleep.
"""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.sagas import warehouse_back
from tests.stack import Stack


def sign_in(page: Page, token: str, then: str = "/ui/runs") -> None:
    """Sign in through the form, as a person does, and land on `then`."""
    page.goto(then)
    expect(page).to_have_url(re.compile(r"/ui/login\?"))
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(then) + r"$"))


def test_a_token_signs_in_and_out(page: Page, tokens: dict[str, str]) -> None:
    # Given the console asks for a token before any page
    page.goto("/ui/runs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    # When a wrong token is pasted, then the form says so and stays
    page.get_by_label("API token").fill("saga_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    # When the admin token is pasted, then the runs page opens as "ada"
    page.get_by_label("API token").fill(tokens["admin"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/ui/runs$"))
    expect(page.get_by_role("banner")).to_contain_text("ada")
    # When they sign out, then a page needs signing in again
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    page.goto("/ui/runs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def _unused(stack: Stack, page: Any) -> None:  # placeholders until the pages land
    warehouse_back("")
