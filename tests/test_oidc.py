"""The OpenID Connect provider (issue 18, item 2), driven by a relying party built with other libraries than the
provider's: requests-oauthlib (oauthlib) for the protocol and PyJWT's PyJWKClient for the ID token, never Authlib.

The gateway runs on a real Redis, served over HTTP on a loopback port. The person signs in as the page does
(`POST /channel/login` with the `oauth` handle) with auth codes the simulator mints; tests/test_oidc_browser.py runs
the same flow through the real page in a browser.

The conformance checks are written from the specs, not from the implementation: OpenID Connect Discovery 1.0 §3
and §4, Core 1.0 §2 (ID token), §3.1.2 (authorization endpoint), §3.1.3 (token endpoint), §5.3 (userinfo); RFC 6749
§4.1.2.1 and §5; RFC 6750 §3; RFC 7636 (PKCE).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from oauthlib.oauth2.rfc6749.errors import MismatchingStateError
from requests_oauthlib import OAuth2Session
from werkzeug.serving import make_server

from identity.authorizations import fingerprint
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID
from tests.helpers import EMPLOYEE, UNLINKED, in_background, make_config, register_demo, store_dump
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

REDIRECT = "http://127.0.0.1:8765/oidc/callback"  # the relying party's callback (these tests never call it)
OTHER_REDIRECT = "https://rp.example.com/oidc/callback"
CONFIDENTIAL, PUBLIC = "rp-web", "rp-spa"
PERSON_CLAIMS = ("sub", "corpid", "kind", "unionid", "openid", "follower_id", "userid", "contact_type", "linked")
TIMEOUT = 10


class _LateApp:
    """A WSGI app filled in after the port is bound, so GATEWAY_ISSUER can name the server's own URL."""

    app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


@dataclass
class Provider:
    app: Any
    base: str
    sim: Any
    secret: str  # the confidential client's

    @property
    def rt(self) -> Any:
        return get_runtime(self.app)

    def meta(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.base}/.well-known/openid-configuration", timeout=TIMEOUT).json())


def secret_of(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("client_secret: ")).split(": ", 1)[1]


@pytest.fixture
def provider(sim_server: Any, real_redis: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    """The gateway (GATEWAY_ISSUER = its own loopback URL), the demo corp, a confidential and a public client."""
    from app import create_app

    # oauthlib refuses http:// even on loopback unless told; the provider (Authlib) keeps its own check.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    late = _LateApp()
    server = make_server("127.0.0.1", 0, late, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    app = late.app = create_app(make_config(sim_server, REDIS_URL=redis_url, GATEWAY_ISSUER=base))
    register_demo(app)
    runner = app.test_cli_runner()
    added = runner.invoke(
        args=["client", "add", CONFIDENTIAL, "--corp", DEMO_CORPID, "--redirect-uri", REDIRECT]
        + ["--redirect-uri", OTHER_REDIRECT]
    )
    assert added.exit_code == 0, added.output
    public = runner.invoke(
        args=["client", "add", PUBLIC, "--corp", DEMO_CORPID, "--redirect-uri", REDIRECT, "--public"]
    )
    assert public.exit_code == 0, public.output
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Provider(app, base, sim_server.sim, secret_of(added.output))
    server.shutdown()
    server.server_close()
    get_runtime(app).close()


class RelyingParty:
    """What a relying party does with requests-oauthlib and PyJWT: discovery, the authorization URL (state, nonce,
    PKCE), the token request, the ID token's signature and claims."""

    def __init__(
        self,
        provider: Provider,
        client_id: str = CONFIDENTIAL,
        *,
        secret: str | None = None,
        pkce: bool = False,
        redirect_uri: str = REDIRECT,
        state: str | None = None,
    ) -> None:
        self.provider = provider
        self.client_id = client_id
        self.secret = secret
        self.meta = provider.meta()
        # A state given to the session (not to authorization_url) is the one fetch_token checks the answer against.
        self.session = OAuth2Session(
            client_id, redirect_uri=redirect_uri, scope=["openid"], pkce="S256" if pkce else None, state=state
        )
        self.nonce = secrets.token_urlsafe(16)
        self.state = ""

    def authorization_url(self, **extra: Any) -> str:
        url, self.state = self.session.authorization_url(self.meta["authorization_endpoint"], nonce=self.nonce, **extra)
        return str(url)

    def authorize(self, **extra: Any) -> requests.Response:
        return requests.get(self.authorization_url(**extra), allow_redirects=False, timeout=TIMEOUT)

    def redirect_after_sign_in(self, person: dict[str, Any] = EMPLOYEE, **extra: Any) -> str:
        """Authorize, then sign in on the page as `person`: the URL the page is sent to."""
        response = sign_in(self.provider, handle_of(self.authorize(**extra)), person)
        assert response.status_code == 200, response.text
        return str(response.json()["redirect"])

    def fetch_token(self, redirect: str) -> dict[str, Any]:
        """The token request: client_secret_basic for a confidential client, client_id + code_verifier otherwise."""
        endpoint = self.meta["token_endpoint"]
        if self.secret is None:
            return dict(self.session.fetch_token(endpoint, authorization_response=redirect, include_client_id=True))
        return dict(self.session.fetch_token(endpoint, authorization_response=redirect, client_secret=self.secret))

    def verify(self, id_token: str) -> dict[str, Any]:
        key = jwt.PyJWKClient(self.meta["jwks_uri"]).get_signing_key_from_jwt(id_token)
        return dict(
            jwt.decode(
                id_token,
                key.key,
                algorithms=self.meta["id_token_signing_alg_values_supported"],
                audience=self.client_id,
                issuer=self.meta["issuer"],
                options={"require": ["iss", "sub", "aud", "exp", "iat"]},
            )
        )


def handle_of(response: requests.Response) -> str:
    """The handle in /oauth/authorize's redirect to the corp's sign-in page (which it checks)."""
    assert response.status_code == 302, response.text
    page = urlsplit(response.headers["Location"])
    query = parse_qs(page.query)
    assert page.path == "/channel/login"
    assert query["corpid"] == [DEMO_CORPID] and query["agentid"] == [DEMO_AGENT_ID]
    return query["oauth"][0]


def sign_in(
    provider: Provider, handle: str, person: dict[str, Any] = EMPLOYEE, *, corpid: str = DEMO_CORPID
) -> requests.Response:
    """What the page does: a fresh DingTalk auth code, posted with the handle."""
    code = provider.sim.mint_auth_code(DEMO_CORPID, person["unionid"])
    body = {"corpid": corpid, "code": code, "oauth": handle}
    return requests.post(f"{provider.base}/channel/login", json=body, timeout=TIMEOUT)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def exchange(provider: Provider, code: str, *, redirect_uri: str = REDIRECT, **form: str) -> requests.Response:
    """A raw token request by the confidential client (client_secret_basic), for what a library would hide."""
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, **form}
    auth = (CONFIDENTIAL, provider.secret)
    return requests.post(f"{provider.base}/oauth/token", data=body, auth=auth, timeout=TIMEOUT)


def userinfo(provider: Provider, access_token: str) -> requests.Response:
    headers = {"Authorization": f"Bearer {access_token}"}
    return requests.get(f"{provider.base}/oauth/userinfo", headers=headers, timeout=TIMEOUT)


def half_hash(value: str) -> str:
    """at_hash as Core §3.1.3.6 defines it for a SHA-256 algorithm: base64url of the left half of the digest."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


# -- the code flow, end to end ------------------------------------------------------------------------------------


def test_a_confidential_client_signs_a_person_in(provider: Provider) -> None:
    rp = RelyingParty(provider, secret=provider.secret)
    redirect = rp.redirect_after_sign_in()
    assert redirect.startswith(REDIRECT + "?") and query_of(redirect)["state"] == rp.state
    token = rp.fetch_token(redirect)
    assert token["token_type"] == "Bearer" and token["scope"] == ["openid"] and token["expires_in"] > 0
    claims = rp.verify(token["id_token"])
    assert (claims["aud"], claims["nonce"], claims["userid"]) == (CONFIDENTIAL, rp.nonce, EMPLOYEE["userid"])
    assert (claims["iss"], claims["sub"], claims["corpid"], claims["linked"]) == (
        provider.base,
        EMPLOYEE["userid"],
        DEMO_CORPID,
        True,
    )
    info = rp.session.get(rp.meta["userinfo_endpoint"], timeout=TIMEOUT)
    assert info.status_code == 200
    assert info.json() == {name: claims[name] for name in PERSON_CLAIMS}


def test_a_public_client_signs_a_person_in_with_pkce(provider: Provider) -> None:
    rp = RelyingParty(provider, PUBLIC, pkce=True)
    url = rp.authorization_url()
    assert query_of(url)["code_challenge_method"] == "S256"
    redirect = rp.redirect_after_sign_in(UNLINKED)
    token = rp.fetch_token(redirect)
    claims = rp.verify(token["id_token"])
    assert (claims["aud"], claims["nonce"]) == (PUBLIC, rp.nonce)
    assert claims["userid"] is None and claims["linked"] is False
    assert claims["sub"] == f"unionid:{UNLINKED['unionid']}" and claims["unionid"] == UNLINKED["unionid"]


def test_client_secret_post(provider: Provider) -> None:
    rp = RelyingParty(provider)
    code = query_of(rp.redirect_after_sign_in())["code"]
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": CONFIDENTIAL,
        "client_secret": provider.secret,
    }
    response = requests.post(rp.meta["token_endpoint"], data=body, timeout=TIMEOUT)  # no Authorization header
    assert response.status_code == 200, response.text
    assert rp.verify(response.json()["id_token"])["aud"] == CONFIDENTIAL


def test_the_redirect_keeps_the_redirect_uris_own_query(provider: Provider) -> None:
    rt = provider.rt
    client = rt.clients.get(CONFIDENTIAL)
    with_query = "https://rp.example.com/cb?tenant=a%20b"
    rt.clients.add(dataclasses.replace(client, redirect_uris=(with_query,)))
    rp = RelyingParty(provider, redirect_uri=with_query)
    redirect = rp.redirect_after_sign_in()
    assert urlsplit(redirect).netloc == "rp.example.com" and query_of(redirect)["tenant"] == "a b"
    assert set(query_of(redirect)) == {"tenant", "code", "state"}


# -- the authorization endpoint's refusals ------------------------------------------------------------------------


def test_an_unknown_client_gets_an_error_page_and_no_redirect(provider: Provider) -> None:
    rp = RelyingParty(provider, "rp-nobody")
    response = rp.authorize()
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert 'data-error="invalid_client"' in response.text and "无法登录该应用" in response.text


def test_an_unregistered_redirect_uri_gets_an_error_page_and_no_redirect(provider: Provider) -> None:
    for uri in ("https://evil.example.com/cb", REDIRECT + "/", REDIRECT.upper(), REDIRECT + "?x=1"):
        response = RelyingParty(provider, redirect_uri=uri).authorize()
        assert response.status_code == 400 and "Location" not in response.headers, uri
        assert 'data-error="invalid_request"' in response.text


def test_a_missing_redirect_uri_gets_an_error_page(provider: Provider) -> None:
    query = urlencode({"response_type": "code", "client_id": CONFIDENTIAL, "scope": "openid", "state": "s"})
    response = requests.get(f"{provider.base}/oauth/authorize?{query}", allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 400 and "Location" not in response.headers


def authorize_error(provider: Provider, **params: str) -> dict[str, str]:
    """The error /oauth/authorize redirected to the client with (RFC 6749 §4.1.2.1), for a request made of a valid
    one and `params`."""
    query = {
        "response_type": "code",
        "client_id": CONFIDENTIAL,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "st-" + secrets.token_urlsafe(8),
        "nonce": "n-1",
        **params,
    }
    response = requests.get(
        f"{provider.base}/oauth/authorize?{urlencode(query)}", allow_redirects=False, timeout=TIMEOUT
    )
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    got = query_of(location)
    assert got["state"] == query["state"] and "code" not in got
    return got


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"scope": "profile email"}, "invalid_scope"),  # OpenID Connect needs the openid scope
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": "code id_token"}, "unsupported_response_type"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "x" * 43}, "invalid_request"),  # no method means plain (RFC 7636 §4.3)
        ({"code_challenge_method": "S256"}, "invalid_request"),  # a method without a challenge
        ({"code_challenge": "short", "code_challenge_method": "S256"}, "invalid_request"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "https://rp.example.com/r"}, "request_uri_not_supported"),
        ({"prompt": "none"}, "login_required"),  # the page must run: no silent sign-in
    ],
)
def test_other_authorization_errors_go_back_to_the_client_with_the_state(
    provider: Provider, params: dict[str, str], error: str
) -> None:
    assert authorize_error(provider, **params)["error"] == error


def test_other_scopes_besides_openid_are_ignored(provider: Provider) -> None:
    rp = RelyingParty(provider, secret=provider.secret)
    rp.session.scope = ["openid", "profile", "email"]
    redirect = rp.redirect_after_sign_in()
    code = query_of(redirect)["code"]
    assert exchange(provider, code).json()["scope"] == "openid"  # the granted scope, RFC 6749 §5.1


def test_a_public_client_must_use_pkce(provider: Provider) -> None:
    query = authorize_error(provider, client_id=PUBLIC)  # no PKCE
    assert query["error"] == "invalid_request" and "code_challenge" in query["error_description"]


def test_a_client_whose_corp_is_gone_hears_server_error(provider: Provider) -> None:
    provider.rt.registry.remove(DEMO_CORPID)
    assert authorize_error(provider)["error"] == "server_error"


# -- the handle: carried by the page, checked before the DingTalk code is spent, single-use -----------------------


def test_a_used_handle_is_refused(provider: Provider) -> None:
    rp = RelyingParty(provider)
    handle = handle_of(rp.authorize())
    assert sign_in(provider, handle).status_code == 200
    again = sign_in(provider, handle)
    assert again.status_code == 400
    error = again.json()["error"]
    assert error["code"] == "invalid_request" and "oauth" in error["message"] and "/oauth/authorize" in error["hint"]


def test_an_expired_handle_is_refused(provider: Provider) -> None:
    provider.rt.authorizations.handle_ttl = 1  # the store expires it (10 minutes in production)
    handle = handle_of(RelyingParty(provider).authorize())
    time.sleep(1.3)
    response = sign_in(provider, handle)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_a_handle_lives_ten_minutes(provider: Provider) -> None:
    handle = handle_of(RelyingParty(provider).authorize())
    ttl = provider.rt.store.ttl(f"dtgw:v1:oidc:handle:{{{fingerprint(handle)}}}")
    assert 590 <= ttl <= 600


@pytest.mark.parametrize("handle", ["unknown-handle-0123456789", "x" * 43])
def test_an_unknown_handle_is_refused_and_the_dingtalk_code_is_not_spent(provider: Provider, handle: str) -> None:
    code = provider.sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
    url = f"{provider.base}/channel/login"
    refused = requests.post(url, json={"corpid": DEMO_CORPID, "code": code, "oauth": handle}, timeout=TIMEOUT)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_request"
    # The handle was checked first: the person's auth code still works.
    plain = requests.post(url, json={"corpid": DEMO_CORPID, "code": code}, timeout=TIMEOUT)
    assert plain.status_code == 200 and plain.json()["userid"] == EMPLOYEE["userid"]


def test_a_handle_for_another_corp_is_refused(provider: Provider) -> None:
    register_demo(provider.app, corpid="dingother0001")
    handle = handle_of(RelyingParty(provider).authorize())
    response = sign_in(provider, handle, corpid="dingother0001")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert "another corp" in response.json()["error"]["message"]
    assert sign_in(provider, handle).status_code == 200  # still usable by its own corp


def test_a_failed_login_leaves_the_handle_for_the_next_try(provider: Provider) -> None:
    """The page replaces a code DingTalk calls invalid; the handle must survive the first attempt."""
    handle = handle_of(RelyingParty(provider).authorize())
    url = f"{provider.base}/channel/login"
    bogus = requests.post(url, json={"corpid": DEMO_CORPID, "code": "never-issued", "oauth": handle}, timeout=TIMEOUT)
    assert bogus.status_code == 401 and bogus.json()["error"]["code"] == "code_invalid"
    assert sign_in(provider, handle).status_code == 200


def test_two_sign_ins_racing_with_one_handle_get_one_redirect(provider: Provider) -> None:
    handle = handle_of(RelyingParty(provider).authorize())
    barrier = threading.Barrier(2)

    def attempt() -> requests.Response:
        code = provider.sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
        barrier.wait(5)
        body = {"corpid": DEMO_CORPID, "code": code, "oauth": handle}
        return requests.post(f"{provider.base}/channel/login", json=body, timeout=TIMEOUT)

    joins = [in_background(attempt) for _ in range(2)]
    statuses = sorted(join(15).status_code for join in joins)
    assert statuses == [200, 400]


def test_the_login_answer_carries_a_redirect_instead_of_a_token(provider: Provider) -> None:
    response = sign_in(provider, handle_of(RelyingParty(provider).authorize()))
    body = response.json()
    assert "token" not in body and body["redirect"].startswith(REDIRECT + "?")
    for name in ("corpid", "kind", "openid", "unionid", "follower_id", "userid", "contact_type", "linked"):
        assert name in body


# -- the token endpoint's refusals ---------------------------------------------------------------------------------


def test_a_code_is_single_use_and_a_replay_revokes_its_access_token(provider: Provider) -> None:
    rp = RelyingParty(provider, secret=provider.secret)
    redirect = rp.redirect_after_sign_in()
    token = rp.fetch_token(redirect)
    assert userinfo(provider, token["access_token"]).status_code == 200
    replay = exchange(provider, query_of(redirect)["code"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert userinfo(provider, token["access_token"]).status_code == 401  # RFC 6749 §4.1.2: revoked


def test_two_exchanges_racing_with_one_code_get_one_token(provider: Provider) -> None:
    code = query_of(RelyingParty(provider).redirect_after_sign_in())["code"]
    barrier = threading.Barrier(2)

    def attempt() -> requests.Response:
        barrier.wait(5)
        return exchange(provider, code)

    joins = [in_background(attempt) for _ in range(2)]
    responses = [join(15) for join in joins]
    assert sorted(r.status_code for r in responses) == [200, 400]
    winner = next(r for r in responses if r.status_code == 200)
    # The loser's attempt counts as a replay: the token the winner got is revoked too (or was never usable).
    assert userinfo(provider, winner.json()["access_token"]).status_code == 401


def test_a_code_lives_60_seconds(provider: Provider) -> None:
    redirect = RelyingParty(provider).redirect_after_sign_in()
    key = f"dtgw:v1:oidc:code:{{{fingerprint(query_of(redirect)['code'])}}}"
    assert 55 <= provider.rt.store.ttl(key) <= 60
    provider.rt.authorizations.code_ttl = 1
    late = query_of(RelyingParty(provider).redirect_after_sign_in())["code"]
    time.sleep(1.3)
    response = exchange(provider, late)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_the_redirect_uri_must_match_the_authorization_requests(provider: Provider) -> None:
    code = query_of(RelyingParty(provider).redirect_after_sign_in())["code"]
    response = exchange(provider, code, redirect_uri=OTHER_REDIRECT)  # registered, but not the one authorized
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_wrong_code_verifier_is_refused(provider: Provider) -> None:
    rp = RelyingParty(provider, PUBLIC, pkce=True)
    code = query_of(rp.redirect_after_sign_in())["code"]
    body = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": PUBLIC,
        "code_verifier": secrets.token_urlsafe(48),
    }
    response = requests.post(rp.meta["token_endpoint"], data=body, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_public_client_must_send_its_verifier(provider: Provider) -> None:
    rp = RelyingParty(provider, PUBLIC, pkce=True)
    code = query_of(rp.redirect_after_sign_in())["code"]
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": PUBLIC}
    response = requests.post(rp.meta["token_endpoint"], data=body, timeout=TIMEOUT)
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("auth", "form"),
    [
        ((CONFIDENTIAL, "wrong-secret"), {}),
        (None, {"client_id": CONFIDENTIAL}),  # a confidential client must authenticate
        (None, {"client_id": CONFIDENTIAL, "client_secret": "wrong-secret"}),
        (("rp-nobody", "secret"), {}),
    ],
)
def test_client_authentication_failures(provider: Provider, auth: tuple[str, str] | None, form: dict[str, str]) -> None:
    code = query_of(RelyingParty(provider).redirect_after_sign_in())["code"]
    body = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **form}
    response = requests.post(f"{provider.base}/oauth/token", data=body, auth=auth, timeout=TIMEOUT)
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
    if auth is not None:  # RFC 6749 §5.2: 401 with the scheme the client used
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic ")
    assert exchange(provider, code).status_code == 200  # an unauthenticated request does not burn the code


def test_a_code_of_another_client_is_refused(provider: Provider) -> None:
    rp = RelyingParty(provider, PUBLIC, pkce=True)
    code = query_of(rp.redirect_after_sign_in())["code"]
    response = exchange(provider, code)  # presented by the confidential client
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_a_removed_client_loses_its_tokens(provider: Provider) -> None:
    rp = RelyingParty(provider, secret=provider.secret)
    token = rp.fetch_token(rp.redirect_after_sign_in())
    assert provider.app.test_cli_runner().invoke(args=["client", "remove", CONFIDENTIAL]).exit_code == 0
    assert userinfo(provider, token["access_token"]).status_code == 401


def test_a_client_removed_during_the_sign_in_gets_no_code(provider: Provider) -> None:
    handle = handle_of(RelyingParty(provider).authorize())
    provider.rt.clients.remove(CONFIDENTIAL)
    response = sign_in(provider, handle)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    assert "redirect" not in response.text


def test_unsupported_grant_type(provider: Provider) -> None:
    body = {"grant_type": "client_credentials"}
    response = requests.post(
        f"{provider.base}/oauth/token", data=body, auth=(CONFIDENTIAL, provider.secret), timeout=TIMEOUT
    )
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"


# -- state: echoed exactly; checking it is the relying party's job ------------------------------------------------


def test_the_state_is_echoed_exactly_and_a_tampered_one_fails_at_the_relying_party(provider: Provider) -> None:
    state = "a b/c?d=e&f+g%h#i:ü~" + secrets.token_urlsafe(8)
    rp = RelyingParty(provider, secret=provider.secret, state=state)
    redirect = rp.redirect_after_sign_in()
    assert rp.state == state and query_of(redirect)["state"] == state
    query = query_of(redirect)
    tampered = f"{REDIRECT}?{urlencode({**query, 'state': state + 'x'})}"
    with pytest.raises(MismatchingStateError):
        rp.fetch_token(tampered)
    assert rp.fetch_token(redirect)["token_type"] == "Bearer"


# -- conformance: written from the specs ---------------------------------------------------------------------------


def test_discovery_document(provider: Provider) -> None:
    """OpenID Connect Discovery 1.0 §3 (required and recommended metadata) and §4.3 (issuer matches)."""
    response = requests.get(f"{provider.base}/.well-known/openid-configuration", timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    meta = response.json()
    required = (
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    )
    for name in required:
        assert meta.get(name), name
    # §4.3: the issuer is the URL the document was fetched under, exactly; no query or fragment.
    assert meta["issuer"] == provider.base
    assert "?" not in meta["issuer"] and "#" not in meta["issuer"]
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert meta[name].startswith(meta["issuer"] + "/"), name
    assert "code" in meta["response_types_supported"]
    assert set(meta["subject_types_supported"]) <= {"public", "pairwise"}
    assert "none" not in meta["id_token_signing_alg_values_supported"]
    assert meta["id_token_signing_alg_values_supported"] == ["ES256"]  # the gateway's decision (issue 18)
    assert "openid" in meta["scopes_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert "plain" not in meta["code_challenge_methods_supported"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {"client_secret_basic", "client_secret_post", "none"}
    assert meta["grant_types_supported"] == ["authorization_code"]
    # Defaults that would be wrong if left out: request_uri_parameter_supported defaults to true.
    assert meta["request_uri_parameter_supported"] is False and meta["request_parameter_supported"] is False
    for claim in ("sub", "iss", "aud", "exp", "iat", "userid", "unionid", "corpid"):
        assert claim in meta["claims_supported"]
    keys = requests.get(meta["jwks_uri"], timeout=TIMEOUT).json()["keys"]
    assert keys and all(k["kty"] == "EC" and k["crv"] == "P-256" and "d" not in k and k["kid"] for k in keys)


def test_token_response_and_id_token(provider: Provider) -> None:
    """Core §3.1.3.3 (the token response), §2 and §3.1.3.7 (the ID token's claims and checks), §3.1.3.6 (at_hash);
    RFC 6749 §5.1 (no caching)."""
    rp = RelyingParty(provider, secret=provider.secret)
    code = query_of(rp.redirect_after_sign_in())["code"]
    before = int(time.time())
    response = exchange(provider, code)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    assert set(body) >= {"access_token", "token_type", "expires_in", "id_token", "scope"}
    assert "refresh_token" not in body
    header = jwt.get_unverified_header(body["id_token"])
    assert header["alg"] == "ES256" and header["kid"] in {k["kid"] for k in provider.rt.keys.jwks()["keys"]}
    claims = rp.verify(body["id_token"])
    assert claims["iss"] == rp.meta["issuer"] and claims["aud"] == CONFIDENTIAL
    assert isinstance(claims["sub"], str) and 0 < len(claims["sub"]) <= 255 and claims["sub"].isascii()
    assert before - 5 <= claims["iat"] <= time.time() + 5 and claims["exp"] > claims["iat"]
    assert claims["nonce"] == rp.nonce
    assert isinstance(claims["auth_time"], int) and before - 5 <= claims["auth_time"] <= claims["iat"]
    assert claims["at_hash"] == half_hash(body["access_token"])
    assert "azp" not in claims or claims["azp"] == CONFIDENTIAL  # one audience: azp not needed
    # The error response is JSON, not cached either (RFC 6749 §5.2).
    again = exchange(provider, code)
    assert again.status_code == 400 and again.headers["Content-Type"].startswith("application/json")
    assert again.headers["Cache-Control"] == "no-store" and again.headers["Pragma"] == "no-cache"
    assert set(again.json()) <= {"error", "error_description", "error_uri"}


def test_browser_apps_may_call_the_token_and_userinfo_endpoints(provider: Provider) -> None:
    origin = {"Origin": "https://spa.example.com"}
    for path in ("/oauth/token", "/oauth/userinfo", "/.well-known/openid-configuration"):
        preflight = requests.options(
            f"{provider.base}{path}",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
            timeout=TIMEOUT,
        )
        assert preflight.status_code == 200, path
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        assert "Access-Control-Allow-Credentials" not in preflight.headers
    rp = RelyingParty(provider, PUBLIC, pkce=True)
    redirect = rp.redirect_after_sign_in()
    body = {
        "grant_type": "authorization_code",
        "code": query_of(redirect)["code"],
        "redirect_uri": REDIRECT,
        "client_id": PUBLIC,
        "code_verifier": rp.session._code_verifier,
    }
    token = requests.post(f"{provider.base}/oauth/token", data=body, headers=origin, timeout=TIMEOUT)
    assert token.status_code == 200 and token.headers["Access-Control-Allow-Origin"] == "*"
    refused = requests.get(f"{provider.base}/oauth/userinfo", headers=origin, timeout=TIMEOUT)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]
    authorize = requests.get(rp.authorization_url(), headers=origin, allow_redirects=False, timeout=TIMEOUT)
    assert "Access-Control-Allow-Origin" not in authorize.headers  # a navigation, not an API


def test_the_authorization_endpoint_takes_post_too(provider: Provider) -> None:
    """Core §3.1.2.1: GET and POST (form-encoded) at the authorization endpoint."""
    form = {"response_type": "code", "client_id": CONFIDENTIAL, "redirect_uri": REDIRECT, "scope": "openid"}
    response = requests.post(f"{provider.base}/oauth/authorize", data=form, allow_redirects=False, timeout=TIMEOUT)
    assert sign_in(provider, handle_of(response)).status_code == 200


def test_no_nonce_sent_none_in_the_id_token(provider: Provider) -> None:
    rp = RelyingParty(provider, secret=provider.secret)
    url, rp.state = rp.session.authorization_url(rp.meta["authorization_endpoint"])  # no nonce
    handle = handle_of(requests.get(url, allow_redirects=False, timeout=TIMEOUT))
    redirect = sign_in(provider, handle).json()["redirect"]
    assert "nonce" not in rp.verify(rp.fetch_token(redirect)["id_token"])


def test_userinfo(provider: Provider) -> None:
    """Core §5.3: Bearer, GET and POST, `sub` the ID token's; RFC 6750 §3 for the failures."""
    rp = RelyingParty(provider, secret=provider.secret)
    token = rp.fetch_token(rp.redirect_after_sign_in())
    claims = rp.verify(token["id_token"])
    got = userinfo(provider, token["access_token"])
    assert got.status_code == 200 and got.headers["Content-Type"].startswith("application/json")
    assert got.json()["sub"] == claims["sub"]
    posted = requests.post(
        rp.meta["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=TIMEOUT
    )
    assert posted.status_code == 200 and posted.json() == got.json()
    for bad in (token["access_token"] + "x", "", token["id_token"]):
        refused = userinfo(provider, bad)
        assert refused.status_code in (400, 401), bad
        assert "error" in refused.json()
        assert refused.headers["WWW-Authenticate"].lower().startswith("bearer")
    missing = requests.get(rp.meta["userinfo_endpoint"], timeout=TIMEOUT)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].lower().startswith("bearer")


def test_the_issuer_must_be_set_outside_sandbox_mode(sim_server: Any) -> None:
    from app import create_app

    app = create_app(make_config(sim_server))  # no GATEWAY_ISSUER
    try:
        client = app.test_client()
        for path in ("/.well-known/openid-configuration", "/oauth/authorize?client_id=x"):
            response = client.get(path)
            assert response.status_code == 500, path
            error = response.get_json()["error"]
            assert error["code"] == "internal_error" and "GATEWAY_ISSUER" in error["hint"]
    finally:
        get_runtime(app).close()


def test_sandbox_mode_uses_the_local_url_as_issuer() -> None:
    from app import create_app

    app = create_app({"GATEWAY_SANDBOX": True, "REDIS_URL": None, "TESTING": True})
    try:
        meta = app.test_client().get("/.well-known/openid-configuration", base_url="http://127.0.0.1:5000").get_json()
        assert meta["issuer"] == "http://127.0.0.1:5000"
        assert meta["token_endpoint"] == "http://127.0.0.1:5000/oauth/token"
    finally:
        get_runtime(app).close()
        app.extensions["dtgw.simulator"].stop()


def test_plain_http_off_loopback_is_refused_with_a_hint(provider: Provider) -> None:
    client = provider.app.test_client()
    query = urlencode({"response_type": "code", "client_id": CONFIDENTIAL, "redirect_uri": REDIRECT, "scope": "openid"})
    page = client.get(f"/oauth/authorize?{query}", base_url="http://login.example.com")
    assert page.status_code == 400 and "Location" not in page.headers
    assert "insecure_transport" in page.text and "GATEWAY_TRUST_PROXY" in page.text
    token = client.post("/oauth/token", data={"grant_type": "authorization_code"}, base_url="http://login.example.com")
    assert token.status_code == 400 and token.get_json()["error"] == "insecure_transport"


def test_no_secret_code_handle_or_token_in_the_store_or_the_logs(
    provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rp = RelyingParty(provider, secret=provider.secret)
    response = rp.authorize()
    handle = handle_of(response)
    redirect = sign_in(provider, handle).json()["redirect"]
    code = query_of(redirect)["code"]
    token = rp.fetch_token(redirect)
    exchange(provider, code)  # a replay, logged
    userinfo(provider, token["access_token"] + "x")
    dump = store_dump(provider.rt.store)
    # The relying party's own libraries (oauthlib, requests-oauthlib) log tokens at DEBUG: not the gateway's log.
    gateway_log = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("oauthlib", "requests_oauthlib", "urllib3"))
    )
    for secret in (provider.secret, handle, code, token["access_token"], token["id_token"]):
        assert secret not in dump
        assert secret not in gateway_log
    assert fingerprint(handle)[:12] in gateway_log and fingerprint(code)[:12] in gateway_log


def test_the_readmes_verification_snippet_runs(provider: Provider) -> None:
    """README, "Verifying the session token": the few lines of PyJWT a relying system copies, run as written."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    match = re.search(r"^### Verifying the session token\n.*?^```python\n(.*?)^```", readme, re.S | re.M)
    assert match, "README has no python block under 'Verifying the session token'"
    code = match.group(1).replace('"https://login.example.com"', repr(provider.base))
    assert code != match.group(1)
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    mint = provider.sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
    login = requests.post(f"{provider.base}/channel/login", json={"corpid": DEMO_CORPID, "code": mint}, timeout=10)
    token = login.json()["token"]
    assert namespace["verify"](token, DEMO_CORPID)["userid"] == EMPLOYEE["userid"]
    with pytest.raises(jwt.InvalidAudienceError):
        namespace["verify"](token, "dingother0001")
