"""Issue 22 acceptance in headless Chromium: a follower hits a 52013 caused by (a) a URL the page changed after
signing, (b) a host alias, (c) a stale ticket generation; support reads the reference code off the follower's
screen, finds the attempt in the console (desktop and 360 px), opens the prefilled checker, and the checker names
the cause. Screenshots go to artifacts/screenshots/ (issue22-*). Skipped without chromium, except under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.demo import DEMO_CORPID
from tests.helpers import SHOTS
from tests.test_page_browser import SECRET_KEY, TIMEOUT_MS, LiveGateway, start_gateway, visit
from web.runtime import get_runtime

pytestmark = pytest.mark.browser

ADMIN_TOKEN = "issue22-admin-token-0123456789abcdef"
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    """Sandbox mode, the demo corp registered for both names of this server (127.0.0.1 and localhost)."""
    live = start_gateway(
        lambda origin: {
            "GATEWAY_SANDBOX": True,
            "GATEWAY_SANDBOX_ORIGINS": f"{origin},{origin.replace('127.0.0.1', 'localhost')}",
            "GATEWAY_SECRET_KEY": SECRET_KEY,
            "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "REDIS_URL": None,
        }
    )
    yield live
    live.stop()


def _host_alias(route: Any) -> None:
    """A front end that asks the gateway to sign the page under another name of the same server."""
    route.continue_(url=route.request.url.replace("url=http%3A%2F%2F127.0.0.1", "url=http%3A%2F%2Flocalhost"))


def follower_reference(browser: Any, gateway: LiveGateway, cause: str) -> str:
    """Run the follower's page into a 52013 for `cause`; return the reference code its error screen shows."""
    with visit(browser, gateway.origin) as v:
        url = gateway.page_url()
        if cause == "url":
            url = gateway.page_url(sandbox_break="url_changed")
        elif cause == "host":
            v.page.route(lambda u: "/channel/config?" in u, _host_alias)
        else:  # the ticket is refreshed after the page was signed, before DingTalk checks it

            def refresh_then_check(route: Any) -> None:
                rt = get_runtime(gateway.app)
                ticket = rt.channel_client(rt.corp(DEMO_CORPID)).ticket
                rt.store.delete(ticket.key + ":forced")  # an earlier case's report started the refresh cooldown
                assert ticket.force_refresh(0) is not None
                route.continue_()

            v.page.route(lambda u: u.endswith("/sandbox/client/check_config"), refresh_then_check)
        v.page.goto(url)
        v.state("error")
        assert "52013" in v.page.inner_text("#error-title")
        reference = v.page.inner_text("#error-reference").strip()
        assert reference.startswith("R-") and len(reference) == 9
        assert v.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        v.shot(f"issue22-follower-52013-{cause}")
    return reference


def console(browser: Any, gateway: LiveGateway, viewport: dict[str, int]) -> Any:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=viewport, locale="zh-CN")
    page = context.new_page()
    page.goto(gateway.origin + "/support")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login-submit")
    expect(page.locator("#corp-list .corp-item").first).to_be_visible(timeout=TIMEOUT_MS)
    return page


def fits(page: Any) -> bool:
    return bool(page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"))


@pytest.mark.parametrize(("cause", "verdict"), [("url", "url"), ("host", "host"), ("ticket", "ticket")])
def test_support_finds_the_attempt_and_the_checker_names_the_cause(
    browser: Any, gateway: LiveGateway, cause: str, verdict: str
) -> None:
    from playwright.sync_api import expect

    reference = follower_reference(browser, gateway, cause)
    for name, viewport in (("desktop", DESKTOP), ("360", PHONE)):
        page = console(browser, gateway, viewport)
        try:
            assert fits(page), f"console wider than {viewport['width']} px"
            page.fill("#search-q", reference.lower().replace("-", ""))  # as read off a screenshot
            page.click("#search-submit")
            hit = page.locator(".search-hit")
            expect(hit).to_have_count(1, timeout=TIMEOUT_MS)
            expect(hit).to_contain_text(reference)
            expect(hit).to_contain_text("52013")
            hit.locator("button.check-entry").click()
            expect(page.locator("#sig-summary")).to_have_attribute("data-verdict", verdict, timeout=TIMEOUT_MS)
            assert page.input_value("#sig-nonce") and page.input_value("#sig-signature")
            assert fits(page), f"console wider than {viewport['width']} px with the checker open"
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"issue22-console-{cause}-{name}.png"), full_page=True)
        finally:
            page.context.close()
