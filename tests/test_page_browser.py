"""The sign-in page end to end in Debian's headless chromium (Playwright), against a live gateway.

The gateway runs in sandbox mode on a real loopback port, so the page's own code runs: /channel/config,
the simulated container's dd.config check and requestAuthCode, /channel/login; for the current kinds
(internal, service-window) dd.requestAuthCode with the app's clientId and no dd.config. Outside sandbox mode the
page gets the vendored official JSAPI: in a plain browser it must say "open in DingTalk", and behind a
stand-in for DingTalk's Android bridge it must run the same flow. Each state is saved as a screenshot in
artifacts/screenshots/. Skipped without chromium or Playwright, except under CI=true.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from channel.session import verify_token
from corp.registry import Corp
from gateway import trace
from sandbox.demo import (
    DEMO_AGENT_ID,
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_CHANNEL_SECRET,
    DEMO_CORP_SECRET,
    DEMO_CORPID,
    DEMO_FOLLOWERS,
    DEMO_MEMBERS,
    DEMO_ORG_CORPID,
    DEMO_PEOPLE,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_CORPID,
)
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from tests.helpers import SHOTS
from web.runtime import get_runtime

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 360, "height": 740}
SECRET_KEY = "browser-test-secret-key-0123456789"
TIMEOUT_MS = 15_000

EMPLOYEE = next(p for p in DEMO_PEOPLE if p["contact_type"] == 0)
EXTERNAL = next(p for p in DEMO_PEOPLE if p["contact_type"] == 1)
UNLINKED = next(p for p in DEMO_PEOPLE if p["userid"] is None)


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class _LateApp:
    """A WSGI app filled in after the port is bound, so the app's config can name its own origin."""

    def __init__(self) -> None:
        self.app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)


@dataclass
class LiveGateway:
    app: Any
    origin: str
    server: BaseWSGIServer
    thread: threading.Thread
    simulator: SimulatorServer | None = None

    def page_url(self, corpid: str = DEMO_CORPID, agentid: str = DEMO_AGENT_ID, **extra: str) -> str:
        query = f"corpid={corpid}&agentid={agentid}"
        query += "".join(f"&{k}={v}" for k, v in extra.items())
        return f"{self.origin}/channel/login?{query}"

    def trace(self, corpid: str = DEMO_CORPID) -> list[dict[str, Any]]:
        return trace.recent(get_runtime(self.app).store, corpid)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        simulator = self.app.extensions.get("dtgw.simulator")
        if simulator is not None:
            simulator.stop()


def start_gateway(make_config: Callable[[str], dict[str, Any]]) -> LiveGateway:
    """Serve create_app(make_config(origin)) on a free loopback port, in a thread."""
    from app import create_app

    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True, request_handler=_Quiet)
    origin = f"http://127.0.0.1:{server.server_port}"
    late.app = create_app(make_config(origin))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return LiveGateway(late.app, origin, server, thread)


@pytest.fixture(scope="module")
def gateway() -> Iterator[LiveGateway]:
    """The gateway in sandbox mode, its demo corp registered for exactly this server's origin."""
    live = start_gateway(
        lambda origin: {
            "GATEWAY_SANDBOX": True,
            "GATEWAY_SANDBOX_ORIGINS": origin,
            "GATEWAY_SECRET_KEY": SECRET_KEY,
            "REDIS_URL": None,
        }
    )
    yield live
    live.stop()


@dataclass
class Visit:
    """One browser tab at 360x740 and everything it asked for."""

    page: Any
    requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def state(self, expected: str) -> None:
        self.page.wait_for_selector(f'#app[data-state="{expected}"]', timeout=TIMEOUT_MS)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def pick(self, person: dict[str, Any]) -> None:
        """Answer the simulated container's follower picker."""
        self.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
        self.page.get_by_label(f"{person['name']}（{person['label']}）", exact=False).check()
        self.page.get_by_role("button", name="以此身份授权").click()

    def logins(self) -> list[str]:
        """The POST /channel/login requests the page made."""
        return [u for u in self.requests if u.startswith("POST ") and urlsplit(u[5:]).path == "/channel/login"]


@contextmanager
def visit(browser: Any, origin: str, *, page_errors: int = 0, **context_options: Any) -> Iterator[Visit]:
    """Open a tab; afterwards, assert it requested nothing from any host but the gateway's.

    `page_errors`: how many uncaught errors to accept (the official JSAPI leaves one behind when dd.config
    fails: its dd.ready is `config$.then(callback)` with no rejection handler).
    """
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", service_workers="block", **context_options)
    page = context.new_page()
    v = Visit(page)
    page.on("request", lambda r: v.requests.append(r.url if r.method == "GET" else f"{r.method} {r.url}"))
    page.on("pageerror", lambda e: v.page_errors.append(str(e)))
    try:
        yield v
    finally:
        context.close()
    gateway_host = urlsplit(origin).netloc
    foreign = []
    for entry in v.requests:
        url = entry.rpartition(" ")[2]
        parts = urlsplit(url)
        if parts.scheme == "data":
            continue
        if parts.scheme not in ("http", "https") or parts.netloc != gateway_host:
            foreign.append(url)
    assert foreign == [], f"the page requested other hosts: {foreign}"
    assert len(v.page_errors) == page_errors, f"uncaught errors on the page: {v.page_errors}"


def assert_nothing_secret_kept(v: Visit, sent: dict[str, Any], body: dict[str, Any]) -> None:
    """Neither the auth code nor the session token reaches the page (or its storage)."""
    html = v.page.content()
    assert sent["code"] not in html
    assert "token" not in body or body["token"] not in html
    assert v.page.evaluate("() => document.cookie") == ""
    assert v.page.evaluate("() => window.localStorage.length + window.sessionStorage.length") == 0


def login_exchange(v: Visit, action: Callable[[], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run action; return the JSON request and response of the POST /channel/login it causes."""
    with v.page.expect_response(
        lambda r: urlsplit(r.url).path == "/channel/login" and r.request.method == "POST", timeout=TIMEOUT_MS
    ) as info:
        action()
    return info.value.request.post_data_json, info.value.json()


@pytest.mark.parametrize("person", DEMO_PEOPLE, ids=lambda p: p["unionid"])
def test_follower_signs_in(browser: Any, gateway: LiveGateway, person: dict[str, Any]) -> None:
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url())
        v.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
        if person is EMPLOYEE:
            v.shot("01-sandbox-picker")
        sent, body = login_exchange(v, lambda: v.pick(person))
        if person["userid"]:
            v.state("signed-in")
            assert v.page.inner_text("#success-userid") == person["userid"]
            assert ("员工" if person["contact_type"] == 0 else "外部联系人") in v.page.inner_text("#success-kind")
            assert v.page.is_hidden("#success-unlinked")
            v.shot("02-signed-in-employee" if person is EMPLOYEE else "03-signed-in-external")
        else:
            v.state("not-linked")
            assert "未关联员工记录" in v.page.inner_text("#success-unlinked")
            assert v.page.is_hidden("#success-linked")
            v.shot("04-not-linked")
        assert body["linked"] is bool(person["userid"])
        # Neither the auth code nor the session token reaches the page (or its storage).
        html = v.page.content()
        assert sent["code"] not in html and body["token"] not in html
        assert body["openid"] not in html
        assert v.page.evaluate("() => document.cookie") == ""
        assert v.page.evaluate("() => window.localStorage.length + window.sessionStorage.length") == 0
        assert v.page.locator("#status").get_attribute("aria-live") == "polite"
        # Nothing is wider than the 360-px screen.
        assert v.page.evaluate("() => document.documentElement.scrollWidth") <= VIEWPORT["width"]
    entry = gateway.trace()[0]
    assert entry["kind"] == "login"
    assert entry["outcome"] == ("linked" if person["userid"] else "not_linked")


def test_signature_failure_is_reported_and_explained(browser: Any, gateway: LiveGateway) -> None:
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(sandbox_break="signature"))
        v.state("error")
        assert v.page.get_attribute("#app", "data-error") == "config"
        title = v.page.inner_text("#error-title")
        assert "52013" in title and "签名校验失败" in title
        assert "页面地址与签名地址不一致" in v.page.inner_text("#error-cause")
        assert v.page.get_by_role("button", name="重试").is_visible()
        assert v.page.is_hidden("#sandbox-panel")
        assert v.logins() == []
        v.shot("05-config-error-52013")

        entries = [e for e in gateway.trace() if e["kind"] == "config_error"]
        assert entries, "the page did not report dd.error to /channel/config/error"
        assert entries[0]["errcodes"] == [52013]
        assert entries[0]["url"] == gateway.page_url()  # reported without the fault flag or a fragment

        # Retry is a fresh load (the simulated container's fault is one-shot): the flow now succeeds.
        v.page.get_by_role("button", name="重试").click()
        v.pick(EMPLOYEE)
        v.state("signed-in")
        assert v.page.inner_text("#success-userid") == EMPLOYEE["userid"]


def test_a_rejected_code_is_replaced_once_automatically(browser: Any, gateway: LiveGateway) -> None:
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(sandbox_break="code"))
        v.pick(EMPLOYEE)
        v.state("signed-in")
        assert v.page.inner_text("#success-userid") == EMPLOYEE["userid"]
        assert len(v.logins()) == 2
        v.shot("06-signed-in-after-fresh-code")
    first, second = gateway.trace()[1], gateway.trace()[0]
    # The rejected code is counted in the window's junk entry (issue 19: made-up codes are counted, not listed).
    assert first["kind"] == "junk" and first["count"] == 1
    assert second["kind"] == "login" and second["outcome"] == "linked"


def test_a_second_rejected_code_stops_with_a_retry_button(browser: Any, gateway: LiveGateway) -> None:
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(sandbox_break="codes"))
        v.pick(EMPLOYEE)
        v.state("error")
        assert v.page.get_attribute("#app", "data-error") == "code_invalid"
        assert "授权码无效" in v.page.inner_text("#error-title")
        assert len(v.logins()) == 2
        assert v.page.get_by_role("button", name="重试").is_visible()
        v.shot("07-code-error")


def test_landing_url_gets_the_token_in_the_fragment(browser: Any, gateway: LiveGateway) -> None:
    registry = get_runtime(gateway.app).registry
    demo = registry.get(DEMO_CORPID)
    landing = f"{gateway.origin}/healthz?from=page"
    registry.add(
        Corp(
            corpid=DEMO_CORPID,
            agent_id=DEMO_AGENT_ID,
            origins=demo.origins,
            corp_secret=DEMO_CORP_SECRET,
            channel_secret=DEMO_CHANNEL_SECRET,
            landing_url=landing,
        )
    )
    try:
        with visit(browser, gateway.origin) as v:
            v.page.goto(gateway.page_url())
            v.pick(EMPLOYEE)
            v.page.wait_for_url(f"{landing}#token=*", timeout=TIMEOUT_MS)
            token = urlsplit(v.page.url).fragment.removeprefix("token=")
    finally:
        registry.add(demo)
    claims = verify_token(get_runtime(gateway.app).keys, token, issuer=gateway.origin, corpid=DEMO_CORPID)
    assert claims["sub"] == EMPLOYEE["userid"] and claims["corpid"] == DEMO_CORPID


@pytest.fixture(scope="module")
def plain_gateway() -> Iterator[LiveGateway]:
    """The gateway outside sandbox mode (the page gets the vendored JSAPI), on a simulator upstream."""
    sim = SimulatorServer(Simulator.demo(rate_limit=None)).start()
    live = start_gateway(
        lambda origin: {
            "GATEWAY_SANDBOX": False,
            "DINGTALK_API_BASE": sim.base_url,
            "GATEWAY_SECRET_KEY": SECRET_KEY,
            "REDIS_URL": None,
        }
    )
    get_runtime(live.app).registry.add(
        Corp(
            corpid=DEMO_CORPID,
            agent_id=DEMO_AGENT_ID,
            origins=(live.origin,),
            corp_secret=DEMO_CORP_SECRET,
            channel_secret=DEMO_CHANNEL_SECRET,
        )
    )
    live.simulator = sim
    yield live
    live.stop()
    sim.stop()


def test_outside_dingtalk_says_to_open_it_in_dingtalk(browser: Any, plain_gateway: LiveGateway) -> None:
    """Not sandbox mode, a plain browser: the vendored JSAPI says "not in DingTalk", the page says so."""
    live = plain_gateway
    with visit(browser, live.origin) as v:
        v.page.goto(live.page_url())
        v.state("outside")
        assert "请在钉钉中打开" in v.page.inner_text("#outside-title")
        assert v.page.evaluate("() => window.dd.env.platform") == "notInDingTalk"
        assert any(u.endswith("/static/vendor/dingtalk.open.js") for u in v.requests)
        assert not any("/channel/config" in u for u in v.requests)
        assert not any("sandbox" in u for u in v.requests)
        v.shot("08-outside-dingtalk")

    with visit(browser, live.origin) as v:
        v.page.goto(f"{live.origin}/channel/login?corpid=nosuchcorp&agentid=1")
        assert v.page.get_attribute("#app", "data-state") == "problem"
        assert "该企业尚未接入" in v.page.inner_text("#problem-title")
        v.shot("09-unknown-corp")


def test_internal_app_outside_dingtalk_says_where_to_open_it(browser: Any, plain_gateway: LiveGateway) -> None:
    live = plain_gateway
    get_runtime(live.app).registry.add(
        Corp(
            corpid=DEMO_ORG_CORPID,
            kind="internal",
            agent_id=DEMO_APP_AGENT_ID,
            origins=(live.origin,),
            app_key=DEMO_APP_KEY,
            app_secret="not-used-by-the-page",
        )
    )
    with visit(browser, live.origin) as v:
        v.page.goto(live.page_url(DEMO_ORG_CORPID, DEMO_APP_AGENT_ID))
        v.state("outside")
        assert "工作台" in v.page.inner_text("#view-outside")
        assert not any("/channel/" in u and "/channel/login?" not in u for u in v.requests)
        v.shot("18-internal-outside-dingtalk")


# A stand-in for DingTalk's Android container: the native bridge the official JSAPI talks to
# (window.nuva -> WebViewJavascriptBridgeAndroid(success, fail, service, action, params)), answered from
# Python through an exposed function, so no request leaves the page.
ANDROID_UA = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile "
    "Safari/537.36 AliApp(DingTalk/7.6.0) com.alibaba.android.rimet/0 Channel/1 language/zh-Hans-CN DingTalk(7.6.0)"
)
FAKE_ANDROID_BRIDGE = """
window.nuva = { isReady: true, require: function () {
  return function (ok, fail, service, action, params) {
    var plain = {};
    Object.keys(params || {}).forEach(function (k) {
      if (typeof params[k] !== "function") { plain[k] = params[k]; }
    });
    window.__nativeBridge(service + "." + action, plain, location.href).then(function (answer) {
      if (answer.ok) { ok(answer.result); } else { fail(answer.error); }
    });
  };
} };
"""


def android_native(sim: SimulatorServer, *, person: dict[str, Any], break_signature: bool = False) -> Any:
    """Answer the JSAPI's native calls as the DingTalk client would, from the simulator's client side."""
    calls: list[str] = []

    def handle(method: str, params: dict[str, Any], href: str) -> dict[str, Any]:
        calls.append(method)
        if method == "runtime.permission.requestJsApis":  # what dd.config becomes on Android
            body = {k: params.get(k) for k in ("corpId", "agentId", "timeStamp", "nonceStr", "signature", "type")}
            if break_signature:
                body["signature"] = "0" * 40
            answer = requests.post(f"{sim.base_url}/_client/check_config", json={**body, "url": href}, timeout=5)
            result = answer.json()
            if result.get("ok"):
                return {"ok": True, "result": {}}
            return {
                "ok": False,
                "error": {"errorCode": str(result["errorCode"]), "errorMessage": result["errorMessage"]},
            }
        if method == "channel.permission.requestAuthCode":
            answer = requests.post(
                f"{sim.base_url}/_client/auth_code",
                json={"corpid": params.get("corpId"), "unionid": person["unionid"]},
                timeout=5,
            )
            return {"ok": True, "result": {"code": answer.json()["code"]}}
        return {"ok": False, "error": {"errorCode": "3", "errorMessage": f"unexpected {method}"}}

    handle.calls = calls  # type: ignore[attr-defined]
    return handle


@contextmanager
def android_visit(browser: Any, origin: str, native: Any, *, page_errors: int = 0) -> Iterator[Visit]:
    with visit(browser, origin, page_errors=page_errors, user_agent=ANDROID_UA) as v:
        v.page.expose_function("__nativeBridge", native)
        v.page.add_init_script(FAKE_ANDROID_BRIDGE)
        yield v


def test_official_jsapi_signs_in_through_an_android_container(browser: Any, plain_gateway: LiveGateway) -> None:
    """The vendored dingtalk-jsapi (not the sandbox's dd) drives the same flow on its Android code path."""
    native = android_native(plain_gateway.simulator, person=EMPLOYEE)
    with android_visit(browser, plain_gateway.origin, native) as v:
        v.page.goto(plain_gateway.page_url())
        v.state("signed-in")
        assert v.page.evaluate("() => window.dd.env.platform") == "android"
        assert v.page.inner_text("#success-userid") == EMPLOYEE["userid"]
        v.shot("10-official-jsapi-android-signed-in")
    # dd.config was checked before the auth code was asked for.
    assert native.calls == ["runtime.permission.requestJsApis", "channel.permission.requestAuthCode"]


def test_official_jsapi_reports_a_signature_failure(browser: Any, plain_gateway: LiveGateway) -> None:
    native = android_native(plain_gateway.simulator, person=EMPLOYEE, break_signature=True)
    with android_visit(browser, plain_gateway.origin, native, page_errors=1) as v:
        v.page.goto(plain_gateway.page_url())
        v.state("error")
        assert "52013" in v.page.inner_text("#error-title")
    assert native.calls == ["runtime.permission.requestJsApis"]  # no auth code after a failed dd.config
    entry = plain_gateway.trace()[0]
    assert entry["kind"] == "config_error" and entry["errcodes"] == [52013]


# ---- the current-generation kinds (issue 17): dd.requestAuthCode with the app's clientId, no dd.config ---------

EMPLOYEE_MEMBER = {**next(m for m in DEMO_MEMBERS if m["contact_type"] == 0), "label": "员工"}
FOLLOWER = {f["userid"]: f for f in DEMO_FOLLOWERS}
MEMBER = {m["userid"]: m for m in DEMO_MEMBERS}


def app_code_exchange(v: Visit, person: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Pick person in the simulated container; return what it sent to /sandbox/client/app_code, and the JSON request
    and response of the POST /channel/login that followed."""
    with v.page.expect_request(
        lambda r: urlsplit(r.url).path == "/sandbox/client/app_code", timeout=TIMEOUT_MS
    ) as minted:
        sent, body = login_exchange(v, lambda: v.pick(person))
    return minted.value.post_data_json, sent, body


def assert_no_dd_config(v: Visit) -> None:
    """The current kinds never sign a dd.config: requestAuthCode with the clientId needs none (§7.3)."""
    assert not any("/channel/config" in u or "/sandbox/client/check_config" in u for u in v.requests)


@pytest.mark.parametrize("old_client", [False, True], ids=["requestAuthCode", "runtime-permission-fallback"])
def test_employee_signs_in_to_the_internal_app(browser: Any, gateway: LiveGateway, old_client: bool) -> None:
    extra = {"sandbox_break": "old_client"} if old_client else {}
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(DEMO_ORG_CORPID, DEMO_APP_AGENT_ID, **extra))
        v.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
        assert "选择一位演示员工" in v.page.inner_text("#sandbox-legend")
        assert v.page.title() == "企业应用登录"
        if not old_client:
            v.shot("11-internal-picker")
        minted, sent, body = app_code_exchange(v, EMPLOYEE_MEMBER)
        v.state("signed-in")
        assert v.page.inner_text("#success-userid") == EMPLOYEE_MEMBER["userid"]
        assert v.page.inner_text("#success-kind") == "员工"
        assert "企业员工" in v.page.inner_text("#success-linked")
        # The old client's code came from dd.runtime.permission.requestAuthCode, which sends no clientId.
        assert minted.get("client_id") in ((None, "") if old_client else (DEMO_APP_KEY,)), minted
        v.shot("16-internal-old-client-signed-in" if old_client else "12-internal-employee-signed-in")
        assert_nothing_secret_kept(v, sent, body)
        assert_no_dd_config(v)
    # The newer API sends the app's clientId; the archived one sends none (the container knows the app).
    expected = {"corpid": DEMO_ORG_CORPID, "userid": EMPLOYEE_MEMBER["userid"]}
    assert minted == (expected if old_client else {**expected, "client_id": DEMO_APP_KEY})
    assert body["kind"] == "internal" and body["contact_type"] == 0 and body["follower_id"] is None
    entry = gateway.trace(DEMO_ORG_CORPID)[0]
    assert entry["kind"] == "login" and entry["outcome"] == "linked"


@pytest.mark.parametrize(
    ("follower_id", "shot"),
    [("vfollower0001", "13-window-employee"), ("vfollower0002", "14-window-external")],
    ids=["mapped-to-employee", "mapped-to-external-contact"],
)
def test_follower_mapped_into_the_real_org_signs_in(
    browser: Any, gateway: LiveGateway, follower_id: str, shot: str
) -> None:
    follower = FOLLOWER[follower_id]
    member = MEMBER[follower["links_to"]]
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(DEMO_WINDOW_CORPID, DEMO_WINDOW_AGENT_ID))
        minted, sent, body = app_code_exchange(v, follower)
        v.state("signed-in")
        assert v.page.inner_text("#success-userid") == member["userid"]
        who = "员工" if member["contact_type"] == 0 else "外部联系人"
        assert v.page.inner_text("#success-kind") == f"{who}（服务窗关注者）"
        assert v.page.inner_text("#success-follower") == follower_id
        assert "通过服务窗登录" in v.page.inner_text("#success-linked")
        assert v.page.is_hidden("#success-unlinked")
        v.shot(shot)
        assert_nothing_secret_kept(v, sent, body)
        assert_no_dd_config(v)
        assert v.page.evaluate("() => document.documentElement.scrollWidth") <= VIEWPORT["width"]
    assert minted == {"corpid": DEMO_WINDOW_CORPID, "client_id": DEMO_WINDOW_APP_KEY, "userid": follower_id}
    assert body["linked"] is True and body["contact_type"] == member["contact_type"]
    assert body["follower_id"] == follower_id and body["kind"] == "service-window"


def test_follower_not_in_the_real_org_is_verified_but_not_linked(browser: Any, gateway: LiveGateway) -> None:
    follower = next(f for f in DEMO_FOLLOWERS if f["followed"] and f["links_to"] is None)
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(DEMO_WINDOW_CORPID, DEMO_WINDOW_AGENT_ID))
        _, sent, body = app_code_exchange(v, follower)
        v.state("not-linked")
        assert v.page.inner_text("#success-title") == "已验证关注者身份"
        assert "未关联企业成员" in v.page.inner_text("#success-unlinked")
        assert v.page.is_hidden("#success-linked")
        assert v.page.inner_text("#success-follower") == follower["userid"]
        v.shot("15-window-not-linked")
        assert_nothing_secret_kept(v, sent, body)
    assert body["linked"] is False and body["userid"] is None
    assert gateway.trace(DEMO_WINDOW_CORPID)[0]["outcome"] == "not_linked"


def test_unfollowed_follower_is_asked_to_follow_first(browser: Any, gateway: LiveGateway) -> None:
    gone = next(f for f in DEMO_FOLLOWERS if not f["followed"])
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url(DEMO_WINDOW_CORPID, DEMO_WINDOW_AGENT_ID))
        _, sent, body = app_code_exchange(v, gone)
        v.state("not-following")
        assert v.page.inner_text("#not-following-title") == "请先关注服务窗"
        assert "只允许关注者登录" in v.page.inner_text("#view-not-following")
        assert v.page.get_by_role("button", name="我已关注，重新登录").is_visible()
        assert v.page.is_hidden("#view-success") and v.page.is_hidden("#view-error")
        assert len(v.logins()) == 1  # refused for who they are: no fresh code is tried
        v.shot("17-window-not-following")
        assert_nothing_secret_kept(v, sent, body)
    assert body["error"]["code"] == "not_following"
    assert gateway.trace(DEMO_WINDOW_CORPID)[0]["outcome"] == "not_following"


def test_a_queued_login_waits_retry_after_and_sends_the_same_code_again(browser: Any, gateway: LiveGateway) -> None:
    """A burst past the gateway's wait gets 503 upstream_unavailable with Retry-After before DingTalk is asked (issue
    19): the page waits that long and posts the same, still unspent, code again instead of showing an error."""
    with visit(browser, gateway.origin) as v:
        posted: list[dict[str, Any]] = []

        def first_is_queued(route: Any) -> None:
            posted.append(route.request.post_data_json)
            if len(posted) == 1:
                body = {"error": {"code": "upstream_unavailable", "message": "queue full", "hint": "wait"}}
                route.fulfill(status=503, json=body, headers={"Retry-After": "1"})
            else:
                route.continue_()

        v.page.route(
            "**/channel/login",
            lambda route: first_is_queued(route) if route.request.method == "POST" else route.continue_(),
        )
        v.page.goto(gateway.page_url())
        v.pick(EMPLOYEE)
        v.state("queued")
        v.state("signed-in")
        assert v.page.inner_text("#success-userid") == EMPLOYEE["userid"]
        assert len(posted) == 2 and posted[0]["code"] == posted[1]["code"]


def test_the_follower_page_wording(browser: Any, gateway: LiveGateway) -> None:
    """Issue 22, item 5: the picker's labels, the status line while the person chooses, an empty choice, the external
    contact's success line, and no status line repeating a result card's title."""
    with visit(browser, gateway.origin) as v:
        v.page.goto(gateway.page_url())
        v.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
        # While the person chooses, the page says it waits for them, not that it is asking DingTalk.
        status = v.page.inner_text("#status")
        assert status == "请在钉钉中确认授权…" and "正在请求钉钉授权" not in status
        # One pair of brackets per label: "王经理（员工 · 经理）", never "王经理（员工（经理））".
        names = v.page.locator(".picker__name").all_inner_texts()
        assert names and all(n.count("（") == 1 and n.count("）") == 1 for n in names), names
        # Submitting without a choice: the page's own Chinese message, never the browser's English bubble.
        assert v.page.evaluate("() => document.getElementById('sandbox-picker').noValidate") is True
        v.page.get_by_role("button", name="以此身份授权").click()
        error = v.page.locator("#sandbox-picker-error")
        assert error.is_visible() and "请先选择一个身份" in error.inner_text()
        assert v.page.locator("#sandbox-panel").is_visible()
        # An external contact is told so, not that they are a member of the corp.
        login_exchange(v, lambda: v.pick(EXTERNAL))
        v.state("signed-in")
        said = v.page.inner_text("#success-as")
        assert "外部联系人" in said and "企业成员" not in said and "员工" not in said
        # The card's title says what happened; the status line does not repeat it.
        assert v.page.is_hidden("#status") or v.page.inner_text("#status") != v.page.inner_text("#success-title")
        v.shot("22-wording-external-contact")
