"""The web console in Chromium, against a real `saga api`, worker and sweeper (SAGA_AUTH on).

A support engineer signs in with a token, finds an order by its id, reads why it was
compensated, and repairs runs: retries a failed one, cancels a waiting one, sends the
signal it waits for. A read-only token is offered none of that. Every page loads only
from the app itself (the `page` fixture fails a test whose page asks any other host).
Each test waits on what the page shows, with Playwright's `expect` and its deadline; the
run page refreshes itself while the run goes on, so a test watches it finish there.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.browser.sagas import warehouse_back
from tests.stack import Stack, wait_for

try:
    from playwright.sync_api import expect
except ImportError:  # the `browser` fixture skips each test (in CI: fails it), saying why
    expect = None  # type: ignore[assignment]
if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page


RUN_MS = 20_000  # what a run may take to finish, watched on its page (as wait_terminal's 20 s)


# -- helpers ------------------------------------------------------------------------------

@pytest.fixture
def sign_in(page: Page, sessions: dict[str, list[Any]]) -> Callable[..., None]:
    """sign_in(token, then="/ui/runs"): through the form, as a person does, and land on
    `then`; a token signed in before in this module reuses its session cookie."""
    def signed_in(token: str, then: str = "/ui/runs") -> None:
        if token in sessions:
            page.context.add_cookies(sessions[token])
            page.goto(then)
        else:
            page.goto(then)
            expect(page).to_have_url(re.compile(r"/ui/login\?"))
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            sessions[token] = page.context.cookies()
        expect(page).to_have_url(re.compile(re.escape(then) + r"$"))
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    return signed_in


def waiting_for_label(stack: Stack) -> str:
    """An order of version 2, once it waits for its shipping_label signal: its run id."""
    run_id = stack.post_order(version=2)
    wait_for(lambda: any(s["status"] == "waiting" for s in stack.run(run_id)["steps"]), 20,
             f"run {run_id} to wait for its label")
    return run_id


def failed_run(stack: Stack) -> str:
    """A brittle_order whose card is declined and whose stock release gives up: `failed`."""
    run_id = stack.post_run("brittle_order", {"order_id": f"b-{uuid.uuid4().hex[:8]}"})
    assert stack.wait_terminal(run_id, 20)["status"] == "failed"
    return run_id


def send_label(stack: Stack, run_id: str, tracking: str) -> None:
    """The shipping label, sent through the API (not the page under test)."""
    sent = stack.http.post(f"{stack.base}/v1/runs/{run_id}/signals/shipping_label",
                           json={"payload": {"tracking": tracking}}, timeout=10)
    assert sent.status_code == 202, sent.text


def history_by(page: Page, name: str) -> Locator:
    """The rows of the run's history that token `name` caused."""
    return page.get_by_role("region", name=re.compile("^History")).get_by_role("row").filter(
        has=page.get_by_role("cell", name=name, exact=True))


def status_badge(page: Page) -> Locator:
    return page.locator('[data-test="run-status"]')


# -- the tests ----------------------------------------------------------------------------

def test_a_token_signs_in_and_the_runs_list_refreshes_by_itself(
        page: Page, console_stack: Stack, tokens: dict[str, str]) -> None:
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
    # When an order starts while the page is open, then it appears without a reload
    run_id = console_stack.post_order()
    expect(page.get_by_role("link", name=run_id)).to_be_visible()
    # When they sign out, then a page needs signing in again
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    page.goto("/ui/runs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_compensated_order_is_found_by_its_id_and_shows_its_compensations(
        page: Page, console_stack: Stack, tokens: dict[str, str],
        sign_in: Callable[..., None]) -> None:
    # Given an order no carrier ships to (charged, then refunded and released), among others
    order_id = f"o-{uuid.uuid4().hex[:8]}"
    run_id = console_stack.post_order(order_id=order_id, address="nowhere")
    console_stack.post_order()
    assert console_stack.wait_terminal(run_id, 20)["status"] == "compensated"
    sign_in(tokens["admin"])
    # When the order id is searched, then that run alone is listed
    page.get_by_role("searchbox", name="Search").fill(order_id)
    page.get_by_role("searchbox", name="Search").press("Enter")
    expect(page).to_have_url(re.compile(rf"q={order_id}"))
    rows = page.get_by_role("table").locator("tbody").get_by_role("row")
    expect(rows).to_have_count(1)
    # When it is opened, then it says compensated, and why
    rows.get_by_role("link", name=run_id).click()
    expect(page.get_by_role("heading", name=f"Run {run_id}")).to_be_visible()
    expect(status_badge(page)).to_have_text("compensated")
    # and its timeline marks the failure that started compensation, then the
    # compensations in reverse order: the refund before the release
    timeline = page.get_by_role("img", name=re.compile("Timeline"))
    expect(timeline.locator(".tl-cause[data-step=create_shipment]")).to_have_count(1)
    expect(timeline.get_by_text("compensation starts", exact=True)).to_be_visible()
    refund = timeline.locator(".tl-compensate[data-step=charge_card] .tl-run").first
    release = timeline.locator(".tl-compensate[data-step=reserve_inventory] .tl-run").first
    assert float(refund.get_attribute("x") or 0) < float(release.get_attribute("x") or 0)
    steps = page.get_by_role("region", name="Steps")
    expect(steps.get_by_role("rowheader", name="↶ charge_card")).to_be_visible()
    expect(steps.get_by_role("rowheader", name="↶ reserve_inventory")).to_be_visible()
    expect(steps).to_contain_text("nowhere")  # the carrier's refusal, the error that started it


def test_a_failed_run_is_retried_and_finishes(
        page: Page, console_stack: Stack, tokens: dict[str, str],
        sign_in: Callable[..., None]) -> None:
    # Given a run that failed: its stock release gave up while the warehouse was down
    run_id = failed_run(console_stack)
    sign_in(tokens["admin"], f"/ui/runs/{run_id}")
    expect(status_badge(page)).to_have_text("failed")
    # When the warehouse is back and the run is retried (and the dialog confirmed)
    warehouse_back(console_stack.folder, run_id).touch()
    page.get_by_role("button", name="Retry…").click()
    page.get_by_role("dialog").get_by_role("button", name="Retry run").click()
    # Then the page says so and, without a reload, shows the run finish compensated,
    # its history naming ada
    expect(page.get_by_role("status")).to_contain_text("Retry requested")
    expect(status_badge(page)).to_have_text("compensated", timeout=RUN_MS)
    expect(history_by(page, "ada").first).to_be_visible()
    expect(page.get_by_role("button", name="Retry…")).to_have_count(0)
    assert console_stack.run(run_id)["status"] == "compensated"


def test_a_waiting_order_is_cancelled(
        page: Page, console_stack: Stack, tokens: dict[str, str],
        sign_in: Callable[..., None]) -> None:
    # Given an order waiting for its shipping label
    run_id = waiting_for_label(console_stack)
    sign_in(tokens["admin"], f"/ui/runs/{run_id}")
    # When it is cancelled, and the dialog confirmed
    page.get_by_role("button", name="Cancel run…").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel run").click()
    # Then what it did is undone, and the history says ada asked for it
    expect(page.get_by_role("status")).to_contain_text("Cancel requested")
    expect(status_badge(page)).to_have_text("cancelled", timeout=RUN_MS)  # no reload
    expect(history_by(page, "ada").first).to_be_visible()
    assert console_stack.run(run_id)["status"] == "cancelled"


def test_an_open_dialog_stays_open_while_the_page_refreshes_behind_it(
        page: Page, console_stack: Stack, tokens: dict[str, str],
        sign_in: Callable[..., None]) -> None:
    # Given the Cancel dialog open on an order waiting for its label
    run_id = waiting_for_label(console_stack)
    sign_in(tokens["admin"], f"/ui/runs/{run_id}")
    page.get_by_role("button", name="Cancel run…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    # When the label arrives through the API and the run finishes
    send_label(console_stack, run_id, "1Z-BEHIND")
    # Then the page behind the dialog shows it, and the dialog stays open
    expect(status_badge(page)).to_have_text("succeeded", timeout=RUN_MS)
    expect(dialog).to_be_visible()
    # When it is closed, then the actions catch up: nothing is left to cancel
    dialog.get_by_role("link", name="Keep it as it is").click()
    expect(page.get_by_role("button", name="Cancel run…")).to_have_count(0)


def test_a_signal_is_sent_through_its_form(
        page: Page, console_stack: Stack, tokens: dict[str, str],
        sign_in: Callable[..., None]) -> None:
    # Given an order waiting for its shipping label
    run_id = waiting_for_label(console_stack)
    sign_in(tokens["admin"], f"/ui/runs/{run_id}")
    # When the label's form (built from its schema) is filled in, sent, and confirmed
    form = page.get_by_role("group", name=re.compile("^Send signal shipping_label"))
    form.get_by_label("Tracking").fill("1Z999AA10123456784")
    form.get_by_role("button", name="Send signal shipping_label…").click()
    review = page.get_by_role("dialog", name=re.compile("Send signal shipping_label"))
    expect(review).to_contain_text("1Z999AA10123456784")
    review.get_by_role("button", name="Send signal", exact=True).click()
    # Then the run goes on and emails the buyer the tracking number, sent by ada
    expect(page.get_by_role("status")).to_contain_text("sent")
    expect(status_badge(page)).to_have_text("succeeded", timeout=RUN_MS)  # no reload
    expect(history_by(page, "ada").filter(has_text="signal.received")).to_have_count(1)
    expect(page.get_by_role("region", name="Steps")).to_contain_text("1Z999AA10123456784")


def test_a_read_token_is_offered_no_repair_and_watches_a_run_finish(
        page: Page, console_stack: Stack, tokens: dict[str, str],
        sign_in: Callable[..., None]) -> None:
    # Given a failed run and a run waiting for a signal
    failed, waiting = failed_run(console_stack), waiting_for_label(console_stack)
    # When a read-only token opens them, then neither offers retry, cancel or a signal
    sign_in(tokens["read"], f"/ui/runs/{failed}")
    expect(status_badge(page)).to_have_text("failed")
    expect(page.get_by_role("button", name="Retry…")).to_have_count(0)
    page.goto(f"/ui/runs/{waiting}")
    expect(status_badge(page)).to_have_text("running")
    for name in ("Cancel run…", "Send signal shipping_label…"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    # When the label arrives through the API meanwhile, then the open page shows the run
    # go on and finish, by itself
    send_label(console_stack, waiting, "1Z-WATCHED")
    expect(status_badge(page)).to_have_text("succeeded", timeout=RUN_MS)
    expect(page.get_by_role("region", name="Steps")).to_contain_text("1Z-WATCHED")
    # and the confirmation page behind the button refuses it
    page.goto(f"/ui/runs/{failed}/retry")
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()


def test_no_page_asks_another_host(page: Page, console_stack: Stack, tokens: dict[str, str],
                                   sign_in: Callable[..., None],
                                   foreign_requests: list[str]) -> None:
    # Given the watcher sees a request to another host (so this test can fail)
    with page.expect_request(re.compile(r"example\.invalid")):
        page.set_content('<img src="http://cdn.example.invalid/pixel.png">')
    assert foreign_requests == ["http://cdn.example.invalid/pixel.png"]
    foreign_requests.clear()
    # When every page of the console is opened, with its scripts, styles and live refresh
    failed_static: list[str] = []
    page.on("response", lambda r: failed_static.append(r.url) if r.status >= 400 else None)
    run_id = console_stack.post_order(address="nowhere")
    console_stack.wait_terminal(run_id, 20)
    sign_in(tokens["admin"], "/ui/")
    for path in ("/ui/runs", f"/ui/runs/{run_id}", "/ui/sagas",
                 "/ui/sagas/order_fulfillment/2", "/ui/schedules", "/ui/"):
        response = page.goto(path)
        assert response is not None and response.ok, (path, response and response.status)
    # Then nothing came from anywhere else, and everything it asked for was there
    assert foreign_requests == []
    assert failed_static == []
