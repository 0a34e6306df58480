"""The OpenID Connect code flow end to end in Debian's headless chromium (Playwright), in sandbox mode: a relying
party built with requests-oauthlib and PyJWT (not the provider's library) sends the browser to /oauth/authorize,
the gateway sends it to the real H5 page, the person picks a demo follower in the simulated DingTalk, and the page
carries the browser to the relying party's callback with the code. Confidential and public (PKCE) clients.

The gateway runs on a real Redis; the relying party's callback is a server of its own on another loopback port.
Screenshots go to artifacts/screenshots/. Skipped without chromium or Playwright, except under CI=true.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from requests_oauthlib import OAuth2Session
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID, DEMO_PEOPLE
from tests.helpers import SHOTS
from web.runtime import get_runtime

pytestmark = [pytest.mark.browser, pytest.mark.redis]

VIEWPORT = {"width": 360, "height": 740}
TIMEOUT_MS = 15_000
EMPLOYEE = next(p for p in DEMO_PEOPLE if p["contact_type"] == 0)
EXTERNAL = next(p for p in DEMO_PEOPLE if p["contact_type"] == 1)
CONFIDENTIAL, PUBLIC = "rp-web", "rp-native"


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class _LateApp:
    """A WSGI app filled in after the port is bound, so the app's config can name its own origin."""

    app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.app(environ, start_response)


def serve(app: Any) -> tuple[BaseWSGIServer, str]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@dataclass
class Callback:
    """The relying party's redirect URI: remembers every URL the browser brought to it."""

    url: str = ""
    seen: list[str] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != urlsplit(self.url).path:  # the browser's own asks (/favicon.ico)
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        query = environ.get("QUERY_STRING", "")
        self.seen.append(f"{self.url}?{query}" if query else self.url)
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        page = "<!doctype html><title>RP</title><link rel='icon' href='data:,'><h1 id='rp'>Code received</h1>"
        return [page.encode()]


@dataclass
class Stack:
    app: Any
    origin: str
    callback: Callback
    secret: str

    @property
    def redirect_uri(self) -> str:
        return self.callback.url


@pytest.fixture
def stack(real_redis: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The gateway in sandbox mode on a real Redis (its demo corp for its own origin), the relying party's callback
    server, and both clients registered with `flask client add`."""
    from app import create_app

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # oauthlib's own rule; the provider keeps Authlib's
    callback = Callback()
    rp_server, rp_origin = serve(callback)
    callback.url = f"{rp_origin}/oidc/callback"
    late = _LateApp()
    gw_server, origin = serve(late)
    app = late.app = create_app(
        {
            "GATEWAY_SANDBOX": True,
            "GATEWAY_SANDBOX_ORIGINS": origin,
            "REDIS_URL": redis_url,
            "GATEWAY_SECRET_KEY": "oidc-browser-test-secret-key-0123456789",
        }
    )
    runner = app.test_cli_runner()
    added = runner.invoke(args=["client", "add", CONFIDENTIAL, "--corp", DEMO_CORPID, "--redirect-uri", callback.url])
    assert added.exit_code == 0, added.output
    public = runner.invoke(
        args=["client", "add", PUBLIC, "--corp", DEMO_CORPID, "--redirect-uri", callback.url, "--public"]
    )
    assert public.exit_code == 0, public.output
    secret = next(line for line in added.output.splitlines() if line.startswith("client_secret: ")).split(": ")[1]
    yield Stack(app, origin, callback, secret)
    for server in (gw_server, rp_server):
        server.shutdown()
        server.server_close()
    simulator = app.extensions.get("dtgw.simulator")
    if simulator is not None:
        simulator.stop()
    get_runtime(app).close()


class RelyingParty:
    """requests-oauthlib for the protocol, PyJWT's PyJWKClient for the ID token."""

    def __init__(self, stack: Stack, client_id: str, *, secret: str | None = None, pkce: bool = False) -> None:
        self.client_id = client_id
        self.secret = secret
        self.meta = requests.get(f"{stack.origin}/.well-known/openid-configuration", timeout=10).json()
        self.session = OAuth2Session(
            client_id, redirect_uri=stack.redirect_uri, scope=["openid"], pkce="S256" if pkce else None
        )
        self.nonce = secrets.token_urlsafe(16)

    def authorization_url(self) -> str:
        url, self.state = self.session.authorization_url(self.meta["authorization_endpoint"], nonce=self.nonce)
        return str(url)

    def finish(self, callback_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The token request (client_secret_basic, or client_id + code_verifier), the ID token verified with the
        JWKS: (token response, ID token claims)."""
        endpoint = self.meta["token_endpoint"]
        if self.secret is None:
            token = self.session.fetch_token(endpoint, authorization_response=callback_url, include_client_id=True)
        else:
            token = self.session.fetch_token(endpoint, authorization_response=callback_url, client_secret=self.secret)
        key = jwt.PyJWKClient(self.meta["jwks_uri"]).get_signing_key_from_jwt(token["id_token"])
        claims = jwt.decode(
            token["id_token"],
            key.key,
            algorithms=["ES256"],
            audience=self.client_id,
            issuer=self.meta["issuer"],
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
        return dict(token), dict(claims)


@dataclass
class Tab:
    page: Any
    logins: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def pick(self, person: dict[str, Any]) -> None:
        self.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
        self.page.get_by_label(f"{person['name']}（{person['label']}）", exact=False).check()
        self.page.get_by_role("button", name="以此身份授权").click()

    def state(self, expected: str) -> None:
        self.page.wait_for_selector(f'#app[data-state="{expected}"]', timeout=TIMEOUT_MS)


@contextmanager
def tab(browser: Any) -> Iterator[Tab]:
    """A 360x740 tab that records each POST /channel/login (request and answer) and any uncaught page error."""
    context = browser.new_context(viewport=VIEWPORT, locale="zh-CN", service_workers="block")
    t = Tab(context.new_page())

    def through(route: Any) -> None:
        # Read the answer on its way to the page: once the page navigates away, the browser drops its body.
        if route.request.method != "POST":
            route.continue_()
            return
        response = route.fetch()
        t.logins.append((route.request.post_data_json, response.json()))
        route.fulfill(response=response)

    t.page.route("**/channel/login*", through)
    t.page.on("pageerror", lambda e: t.errors.append(str(e)))
    try:
        yield t
    finally:
        context.close()
    assert t.errors == [], f"uncaught errors on the page: {t.errors}"


@pytest.mark.parametrize(
    ("client_id", "pkce", "person"),
    [(CONFIDENTIAL, False, EMPLOYEE), (PUBLIC, True, EXTERNAL)],
    ids=["confidential", "public-pkce"],
)
def test_a_relying_party_signs_a_person_in_through_the_page(
    browser: Any, stack: Stack, client_id: str, pkce: bool, person: dict[str, Any]
) -> None:
    rp = RelyingParty(stack, client_id, secret=None if pkce else stack.secret, pkce=pkce)
    with tab(browser) as t:
        t.page.goto(rp.authorization_url())
        # /oauth/authorize sent the browser to the corp's page, with the handle.
        page = urlsplit(t.page.url)
        query = parse_qs(page.query)
        assert f"{page.scheme}://{page.netloc}" == stack.origin and page.path == "/channel/login"
        assert query["corpid"] == [DEMO_CORPID] and query["agentid"] == [DEMO_AGENT_ID] and query["oauth"][0]
        t.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
        t.shot(f"oidc-01-page-for-{client_id}")
        t.pick(person)
        t.page.wait_for_url(f"{stack.redirect_uri}?*", timeout=TIMEOUT_MS)
        t.page.wait_for_selector("#rp", timeout=TIMEOUT_MS)
        t.shot(f"oidc-02-back-at-{client_id}")
        # The page sent the handle and followed `redirect` (no session token for the page to hold).
        [(sent, answer)] = t.logins
        assert sent["oauth"] == query["oauth"][0] and "token" not in answer
        assert answer["redirect"] == t.page.url == stack.callback.seen[-1]
    callback = parse_qs(urlsplit(stack.callback.seen[-1]).query)
    assert callback["state"] == [rp.state] and set(callback) == {"code", "state"}
    token, claims = rp.finish(stack.callback.seen[-1])
    assert claims["aud"] == client_id and claims["nonce"] == rp.nonce
    assert claims["userid"] == person["userid"] and claims["sub"] == person["userid"]
    assert claims["iss"] == stack.origin and claims["corpid"] == DEMO_CORPID
    info = rp.session.get(rp.meta["userinfo_endpoint"], timeout=10).json()
    assert info["sub"] == claims["sub"] and info["userid"] == person["userid"]


def test_the_handle_survives_the_pages_fresh_code(browser: Any, stack: Stack) -> None:
    """The first DingTalk code is bogus (sandbox fault): the page asks for another, and the same handle works."""
    rp = RelyingParty(stack, CONFIDENTIAL, secret=stack.secret)
    with tab(browser) as t:
        t.page.goto(rp.authorization_url())
        t.page.goto(t.page.url + "&sandbox_break=code")
        t.pick(EMPLOYEE)
        t.page.wait_for_url(f"{stack.redirect_uri}?*", timeout=TIMEOUT_MS)
        assert len(t.logins) == 2 and t.logins[0][1]["error"]["code"] == "code_invalid"
        assert t.logins[0][0]["oauth"] == t.logins[1][0]["oauth"]
    assert rp.finish(stack.callback.seen[-1])[1]["userid"] == EMPLOYEE["userid"]


@pytest.mark.parametrize("how", ["used", "expired"])
def test_a_spent_handle_stops_on_the_page(browser: Any, stack: Stack, how: str) -> None:
    rp = RelyingParty(stack, CONFIDENTIAL, secret=stack.secret)
    with tab(browser) as t:
        if how == "expired":
            get_runtime(stack.app).authorizations.handle_ttl = 1
        t.page.goto(rp.authorization_url())
        page_url = t.page.url
        if how == "used":
            t.pick(EMPLOYEE)
            t.page.wait_for_url(f"{stack.redirect_uri}?*", timeout=TIMEOUT_MS)
            t.page.goto(page_url)  # the same link again (back button, a second tab)
        else:
            t.page.wait_for_selector("#sandbox-panel:not([hidden])", timeout=TIMEOUT_MS)
            time.sleep(1.3)
        seen = len(stack.callback.seen)
        t.pick(EMPLOYEE)
        t.state("error")
        assert t.page.get_attribute("#app", "data-error") == "oauth"
        assert "登录请求已失效" in t.page.inner_text("#error-title")
        assert "返回应用" in t.page.inner_text("#error-cause")
        assert t.logins[-1][1]["error"]["code"] == "invalid_request"
        assert len(stack.callback.seen) == seen  # nothing went to the client
        assert t.page.is_hidden("#retry")  # a reload of the spent link cannot succeed: no retry offered
        t.shot(f"oidc-03-handle-{how}")


def test_an_unknown_client_stops_at_the_gateway(browser: Any, stack: Stack) -> None:
    query = urlencode(
        {
            "response_type": "code",
            "client_id": "rp-unknown",
            "redirect_uri": stack.redirect_uri,
            "scope": "openid",
            "state": "s1",
        }
    )
    with tab(browser) as t:
        response = t.page.goto(f"{stack.origin}/oauth/authorize?{query}")
        assert response is not None and response.status == 400
        assert urlsplit(t.page.url).path == "/oauth/authorize"
        assert "无法登录该应用" in t.page.inner_text("#oauth-error-title")
        assert t.page.get_attribute("#app", "data-error") == "invalid_client"
        assert t.page.evaluate("() => document.documentElement.scrollWidth") <= VIEWPORT["width"]
        t.shot("oidc-04-unknown-client")
    assert stack.callback.seen == []
