"""The support console in headless Chromium (issue 9 acceptance): log in, find the corp whose follower got
60121, run the signature checker on a failing case, run the self-test on a corp with a wrong secret.

Screenshots go to artifacts/screenshots/. Skipped without Debian's chromium, except under CI=true.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

from corp.registry import Corp
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from sandbox.server import SimulatorServer
from tests.helpers import ORIGIN, SHOTS, UNLINKED, make_config, need_chromium, register_demo
from web.runtime import get_runtime

pytestmark = pytest.mark.browser

ADMIN_TOKEN = "browser-admin-token-0123456789abcdef"
BROKEN_CORPID = "dingbroken0002"


@pytest.fixture
def live(sim_server: SimulatorServer) -> Iterator[tuple[str, Any]]:
    """The gateway on a real loopback port, with the demo corp and a corp registered with a wrong secret."""
    from app import create_app

    need_chromium()
    sim_server.sim.add_corp(
        BROKEN_CORPID, corp_secret="the-right-corp-secret", channel_secret="the-right-channel-secret", agent_id="2002"
    )
    app = create_app(make_config(sim_server, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN))
    register_demo(app)
    get_runtime(app).registry.add(
        Corp(
            corpid=BROKEN_CORPID,
            agent_id="2002",
            origins=(ORIGIN,),
            corp_secret="a-wrong-corp-secret",
            channel_secret="the-right-channel-secret",
        )
    )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_console_in_a_browser(live: tuple[str, Any], browser: Any, sim_server: SimulatorServer) -> None:
    from playwright.sync_api import expect

    base, app = live
    sim = sim_server.sim
    client = app.test_client()
    # A follower with no user record signs in (60121 -> not_linked), and a page gets a signed config.
    code = sim.mint_auth_code(DEMO_CORPID, UNLINKED["unionid"])
    login = client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})
    assert login.status_code == 200 and login.get_json()["linked"] is False
    request_id = login.headers["X-Request-Id"]
    config = client.get(f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={ORIGIN}/app").get_json()
    # A page reports an error with markup in its message: the console must show it as text.
    client.post(
        "/channel/config/error",
        json={
            "corpid": DEMO_CORPID,
            "agentid": DEMO_AGENT_ID,
            "url": f"{ORIGIN}/app",
            "errorCode": 52017,  # not a ticket error: no refresh, so the console's first refresh goes through
            "errorMessage": '<img id="xss" src="x">',
        },
    )
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Log in.
    page.goto(base + "/support")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#token", "wrong-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_be_visible()
    page.screenshot(path=str(SHOTS / "support-1-login-refused.png"), full_page=True)
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login-submit")
    expect(page.locator("#corp-list .corp-item")).to_have_count(2)

    # The demo corp: its follower's login ended with 60121, with the hint and the request id.
    page.click(f'#corp-list a[data-corpid="{DEMO_CORPID}"]')
    expect(page.locator("#corp-id")).to_have_text(DEMO_CORPID)
    row = page.locator("tr.trace-row.outcome-not_linked")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("60121")
    expect(row).to_contain_text("企业中找不到该 unionid 对应的用户")  # the hint in Chinese
    expect(row).to_contain_text("钉钉原文：找不到该用户")  # beside DingTalk's own text
    expect(row.locator("a.request-id")).to_have_text(request_id)
    expect(page.locator("tr.trace-row.outcome-config_error")).to_contain_text('<img id="xss" src="x">')
    assert page.locator("#xss").count() == 0
    expect(page.locator("#pipeline-channel_ticket")).to_contain_text("是 yes")
    page.select_option("#outcome-filter", "not_linked")
    expect(page.locator("tr.trace-row")).to_have_count(1)
    page.screenshot(path=str(SHOTS / "support-2-corp-60121.png"), full_page=True)

    # Forced refresh, then a refused one (cooldown).
    page.click("#refresh-channel_ticket")
    expect(page.locator("#refresh-result")).to_contain_text("已刷新")
    page.click("#refresh-channel_ticket")
    refused = page.locator("#refresh-result")
    expect(refused).to_contain_text("冷却")
    expect(refused).to_have_class("result refused")
    expect(refused).to_contain_text("Refused: a channel_ticket refresh")  # the envelope's error.message
    expect(refused).to_contain_text("Retry-After")  # ... and its error.hint

    # The signature checker on a failing case: DingTalk reports the URL with an explicit :443, and the ticket
    # was refreshed above. The checker keeps recent tickets (sealed, issue 22), so it names the URL, and says the
    # page's ticket is an older generation; then a case that differs only in the URL.
    page.fill("#sig-url", f"{ORIGIN}:443/app")
    page.fill("#sig-nonce", config["nonceStr"])
    page.fill("#sig-ts", config["timeStamp"])
    page.fill("#sig-signature", config["signature"])
    page.click("#sig-submit")
    expect(page.locator("#sig-verdict")).to_have_attribute("data-verdict", "url")
    expect(page.locator('#sig-findings li.differs[data-part="ticket"]')).to_contain_text("generation 1")
    from oapi.signing import sign

    ticket = get_runtime(app).channel_client(get_runtime(app).corp(DEMO_CORPID)).ticket.peek()
    assert ticket is not None
    page.fill("#sig-signature", sign(ticket.value, config["nonceStr"], config["timeStamp"], f"{ORIGIN}/app"))
    page.click("#sig-submit")
    expect(page.locator("#sig-verdict")).to_contain_text("URL 不一致")
    expect(page.locator("#sig-findings")).to_contain_text("url differs")
    differing = page.locator('#sig-findings li.differs[data-part="url"]')
    expect(differing).to_contain_text("signed without the explicit :443")
    expect(differing).to_contain_text(f"normalized: {ORIGIN}:443/app")
    page.screenshot(path=str(SHOTS / "support-3-signature-checker.png"), full_page=True)

    # The self-test on the corp with a wrong corp secret names the mistake.
    page.click(f'#corp-list a[data-corpid="{BROKEN_CORPID}"]')
    expect(page.locator("#corp-id")).to_have_text(BROKEN_CORPID)
    page.click("#selftest-run")
    corp_result = page.locator('#selftest-results li[data-pipeline="corp"]')
    expect(corp_result).to_contain_text("40001")
    expect(corp_result).to_contain_text("corp secret was refused")
    expect(page.locator('#selftest-results li[data-pipeline="channel"]')).to_contain_text("OK")
    page.screenshot(path=str(SHOTS / "support-4-self-test.png"), full_page=True)

    # The request id opens that request's log lines.
    page.click(f'#corp-list a[data-corpid="{DEMO_CORPID}"]')
    page.click(f'a.request-id:has-text("{request_id}")')
    expect(page.locator("#log-request-id")).to_have_text(request_id)
    expect(page.locator("#log-lines")).to_contain_text("pipeline=corp:token")
    page.screenshot(path=str(SHOTS / "support-5-log-lines.png"), full_page=True)

    # Nothing on any screen was a secret, token, ticket or code.
    rt = get_runtime(app)
    demo = rt.corp(DEMO_CORPID)
    values = {
        DEMO_CORP_SECRET,
        DEMO_CHANNEL_SECRET,
        ADMIN_TOKEN,
        code,
        "a-wrong-corp-secret",
        login.get_json()["token"],
    }
    for cred in (rt.channel_client(demo).token.peek(), rt.corp_client(demo).token.peek(), ticket):
        if cred is not None:
            values.add(cred.value)
    page.goto(base + "/support")
    expect(page.locator("#pipeline-rows tr")).to_have_count(3)
    html = page.content()
    assert not [v for v in values if v in html]
    assert errors == []
