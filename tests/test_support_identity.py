"""The support console's signing keys and OpenID Connect clients (issue 18, item 5): current and previous key ids,
the registered clients, never a private key, a client secret or its hash."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from werkzeug.serving import make_server

from sandbox.demo import DEMO_CORPID
from sandbox.server import SimulatorServer
from tests.helpers import SHOTS, make_config, need_chromium, register_demo
from web.runtime import get_runtime

ADMIN_TOKEN = "identity-admin-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REDIRECT = "https://rp.example.com/callback"


@pytest.fixture
def sapp(sim_server: SimulatorServer) -> Iterator[Any]:
    from app import create_app

    app = create_app(make_config(sim_server, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN))
    register_demo(app)
    yield app
    get_runtime(app).close()


def add_clients(app: Any) -> str:
    """A confidential and a public client of the demo corp; returns the confidential one's secret."""
    runner = app.test_cli_runner()
    out = runner.invoke(args=["client", "add", "rp-web", "--corp", DEMO_CORPID, "--redirect-uri", REDIRECT]).output
    secret = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("client_secret: "))
    public = ["client", "add", "rp-spa", "--corp", DEMO_CORPID, "--redirect-uri", REDIRECT, "--public"]
    assert runner.invoke(args=public).exit_code == 0
    return secret


def test_the_console_api_shows_key_ids_and_clients_but_no_secret(sapp: Any) -> None:
    client = sapp.test_client()
    assert client.get("/support/api/identity").status_code == 401
    secret = add_clients(sapp)
    first = get_runtime(sapp).keys.signing_key().kid
    assert sapp.test_cli_runner().invoke(args=["keys", "rotate"]).exit_code == 0
    resp = client.get("/support/api/identity", headers=BEARER)
    assert resp.status_code == 200
    body = resp.get_json()
    current = get_runtime(sapp).keys.signing_key().kid
    assert [(k["kid"], k["current"]) for k in body["keys"]] == [(current, True), (first, False)]
    assert body["keys"][1]["published_until"] and body["keys"][0]["published_until"] is None
    assert [(c["client_id"], c["type"], c["corp_registered"]) for c in body["clients"]] == [
        ("rp-spa", "public", True),
        ("rp-web", "confidential", True),
    ]
    text = json.dumps(body)
    stored = get_runtime(sapp).clients.get("rp-web")
    assert stored is not None and stored.secret_hash
    private = get_runtime(sapp).keys.signing_key().private_key
    scalar = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)["d"]
    for forbidden in (secret, stored.secret_hash, scalar, "PRIVATE KEY"):
        assert forbidden not in text
    narrowed = client.get("/support/api/identity?corpid=dingnobody0001", headers=BEARER).get_json()
    assert narrowed["clients"] == [] and len(narrowed["keys"]) == 2


@pytest.mark.browser
def test_the_console_shows_the_keys_and_clients_card(sapp: Any, browser: Any) -> None:
    from playwright.sync_api import expect

    need_chromium()
    add_clients(sapp)
    get_runtime(sapp).keys.signing_key()  # a key that has signed, then a rotation: a current and a previous one
    sapp.test_cli_runner().invoke(args=["keys", "rotate"])
    server = make_server("127.0.0.1", 0, sapp, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"http://127.0.0.1:{server.server_port}/support")
        page.fill("#token", ADMIN_TOKEN)
        page.click("#login-submit")
        expect(page.locator("#key-rows tr")).to_have_count(2)
        expect(page.locator("#key-rows tr.current")).to_contain_text(get_runtime(sapp).keys.signing_key().kid)
        expect(page.locator("#key-rows tr.retired")).to_contain_text("previous")
        expect(page.locator("#client-rows tr")).to_have_count(2)
        expect(page.locator('#client-rows tr[data-client="rp-web"]')).to_contain_text("confidential")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("#identity").screenshot(path=str(SHOTS / "support-identity-keys-clients.png"))
        page.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
