"""The support console and the metrics for the current-generation kinds (issue 17, item 8): a corp's kind and
map_via in the console, its app token and app ticket pipelines with their refresh buttons, the trace's app_kind,
follower_id and v1.0 string errcodes with their hints, the self-test per kind, and the app pipelines' and v1.0
calls' own metric labels."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import pytest
from werkzeug.serving import make_server

from oapi.credentials import APP_TICKET, APP_TOKEN
from sandbox.apps import ACCESS_TOKEN, JSAPI_TICKETS
from sandbox.demo import (
    DEMO_APP_SECRET,
    DEMO_CORPID,
    DEMO_ORG_CORPID,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from sandbox.followers import FOLLOWER_STATUSES
from sandbox.server import SimulatorServer
from tests.helpers import ORIGIN, SHOTS, make_config, need_chromium, register_demo
from tests.test_corp_check_kinds import REAL_ORG, WINDOW
from web.runtime import get_runtime

ADMIN_TOKEN = "support-kinds-admin-token-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
API = "/support/api"
IP_REFUSED = "Forbidden.AccessDenied.IpNotInWhiteList"


def build(sim_server: SimulatorServer, **overrides: Any) -> Any:
    """The gateway with the console on, the legacy demo corp, the real org's internal app and its service window."""
    from app import create_app

    config = {"GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN, "GATEWAY_SUPPORT_SELFTEST_COOLDOWN": 0, **overrides}
    application = create_app(make_config(sim_server, **config))
    register_demo(application)
    register(application, REAL_ORG, WINDOW)
    return application


def register(app: Any, *corps: Any) -> None:
    for corp in corps:
        get_runtime(app).registry.add(corp)


@pytest.fixture
def kapp(sim_server: SimulatorServer) -> Iterator[Any]:
    application = build(sim_server)
    yield application
    get_runtime(application).close()


def app_client(app: Any, corpid: str) -> Any:
    rt = get_runtime(app)
    return rt.app_client(rt.corp(corpid))


def window_login(client: Any, sim: Any, userid: str) -> Any:
    code = sim.apps.mint_app_code(DEMO_WINDOW_CORPID, DEMO_WINDOW_APP_KEY, userid)
    return client.post("/channel/login", json={"corpid": DEMO_WINDOW_CORPID, "code": code})


def window_config(client: Any) -> Any:
    url = quote(ORIGIN + "/app", safe="")
    return client.get(f"/channel/config?corpid={DEMO_WINDOW_CORPID}&agentid={DEMO_WINDOW_AGENT_ID}&url={url}")


def state(client: Any, corpid: str) -> dict[str, Any]:
    response = client.get(f"{API}/corps/{corpid}", headers=BEARER)
    assert response.status_code == 200, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["pipeline"]: p for p in body["pipelines"]}


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent); labels in any order."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name) : line.rindex("}") + 1]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the per-corp view -----------------------------------------------------------------------------------------
def test_a_current_kind_corp_shows_its_kind_and_app_pipelines(kapp: Any, sim: Any) -> None:
    client = kapp.test_client()
    body = state(client, DEMO_WINDOW_CORPID)
    corp = body["corp"]
    assert (corp["kind"], corp["app_key"], corp["map_via"], corp["map_by"], corp["require_follow"]) == (
        "service-window",
        DEMO_WINDOW_APP_KEY,
        DEMO_ORG_CORPID,
        "unionid",
        True,
    )
    assert body["map_via"] == {"corpid": DEMO_ORG_CORPID, "registered": True, "kind": "internal", "usable": True}
    assert [p["pipeline"] for p in body["pipelines"]] == ["app_token", "app_ticket"]
    assert not any(p["cached"] for p in body["pipelines"])
    assert [p["pipeline"] for p in state(client, DEMO_CORPID)["pipelines"]] == [
        "channel_token",
        "corp_token",
        "channel_ticket",
    ]
    assert state(client, DEMO_ORG_CORPID)["map_via"] is None

    # A follower signs in (app token) and a page gets its dd.config (app ticket).
    assert window_login(client, sim, "vfollower0001").status_code == 200
    assert window_config(client).status_code == 200
    pipelines = by_name(state(client, DEMO_WINDOW_CORPID))
    for name, cache in (("app_token", "app_token"), ("app_ticket", "app_ticket")):
        cred = getattr(app_client(kapp, DEMO_WINDOW_CORPID), cache).peek()
        view = pipelines[name]
        assert view["cached"] is True and view["fingerprint"] == cred.fingerprint
        assert abs(view["fetched_at"] - cred.fetched_at) < 0.01 and 7000 < view["expires_in"] <= 7200
        assert view["failure"] is None and view["backoff"] == {} and view["cooldown_left"] == 0
    assert pipelines["app_token"]["api"] == APP_TOKEN.api and pipelines["app_ticket"]["api"] == APP_TICKET.api


def test_remembered_v1_failure_and_per_app_backoff_show_on_their_pipeline(kapp: Any, sim: Any) -> None:
    client = kapp.test_client()
    register(kapp, replace(REAL_ORG, app_secret="not-the-app-secret"))
    # A page of the internal app needs its ticket, hence its token: the wrong secret is met and remembered.
    url = quote(ORIGIN + "/", safe="")
    refused = client.get(f"/channel/config?corpid={DEMO_ORG_CORPID}&agentid={REAL_ORG.agent_id}&url={url}")
    assert refused.status_code == 502
    failure = by_name(state(client, DEMO_ORG_CORPID))["app_token"]["failure"]
    assert failure["errcode"] == "invalidClientIdOrSecret"  # the string code, no longer dropped
    assert "appKey/appSecret 错误，或 appSecret 已被重置" in failure["hint"]
    assert failure["dingtalk"] == "无效的clientId或者clientSecret"

    # A v1.0 rate limit is kept per app and API: it shows on the pipeline whose API it holds up.
    get_runtime(kapp).upstream.backoff.trip(DEMO_WINDOW_CORPID, f"{DEMO_WINDOW_APP_KEY}:{APP_TICKET.api}")
    body = state(client, DEMO_WINDOW_CORPID)
    pipelines = by_name(body)
    assert pipelines["app_ticket"]["backoff"] == {f"{DEMO_WINDOW_APP_KEY}:{APP_TICKET.api}": 1}
    assert pipelines["app_token"]["backoff"] == {}
    assert body["backoff"] == {f"{DEMO_WINDOW_APP_KEY}:{APP_TICKET.api}": 1}


def test_map_via_that_logins_cannot_use_is_named(kapp: Any) -> None:
    register(kapp, replace(WINDOW, map_via="dingnosuchorg"))
    assert state(kapp.test_client(), DEMO_WINDOW_CORPID)["map_via"] == {
        "corpid": "dingnosuchorg",
        "registered": False,
        "kind": None,
        "usable": False,
    }
    register(kapp, replace(WINDOW, map_via=DEMO_CORPID))
    assert state(kapp.test_client(), DEMO_WINDOW_CORPID)["map_via"]["kind"] == "channel"


# -- refresh buttons -------------------------------------------------------------------------------------------
@pytest.mark.redis
def test_refresh_buttons_for_app_token_and_ticket_on_a_real_redis(
    sim_server: SimulatorServer, redis_url: str, real_redis: Any, sim: Any
) -> None:
    app = build(sim_server, REDIS_URL=redis_url)
    client = app.test_client()
    path = f"{API}/corps/{DEMO_WINDOW_CORPID}/refresh"
    before = client.get("/metrics").get_data(as_text=True)
    try:
        assert window_config(client).status_code == 200
        token = app_client(app, DEMO_WINDOW_CORPID).app_token.peek()
        tokens = sim.app_controls.calls(ACCESS_TOKEN)

        first = client.post(f"{path}/app_token", headers=BEARER)
        assert first.status_code == 200, first.get_json()
        fresh = first.get_json()["state"]
        assert fresh["pipeline"] == "app_token" and fresh["generation"] > token.generation
        assert fresh["fingerprint"] == app_client(app, DEMO_WINDOW_CORPID).app_token.peek().fingerprint
        assert sim.app_controls.calls(ACCESS_TOKEN) == tokens + 1
        second = client.post(f"{path}/app_token", headers=BEARER)
        assert second.status_code == 429 and second.get_json()["error"]["code"] == "rate_limited"
        assert "app_token" in second.get_json()["error"]["message"] and int(second.headers["Retry-After"]) > 0
        assert sim.app_controls.calls(ACCESS_TOKEN) == tokens + 1

        tickets = sim.app_controls.calls(JSAPI_TICKETS)
        ticket = client.post(f"{path}/app_ticket", headers=BEARER)
        assert ticket.status_code == 200 and ticket.get_json()["state"]["cached"] is True
        assert sim.app_controls.calls(JSAPI_TICKETS) == tickets + 1
        # A pipeline of another kind is refused whatever the cooldowns; so is an app pipeline of a legacy corp.
        wrong = client.post(f"{path}/channel_ticket", headers=BEARER)
        assert wrong.status_code == 400 and "kind service-window" in wrong.get_json()["error"]["message"]
        legacy = client.post(f"{API}/corps/{DEMO_CORPID}/refresh/app_token", headers=BEARER)
        assert legacy.status_code == 400 and "kind channel" in legacy.get_json()["error"]["message"]

        after = client.get("/metrics").get_data(as_text=True)
    finally:
        get_runtime(app).close()
    labels = {"corpid": DEMO_WINDOW_CORPID, "trigger": "console"}
    name = "dtgw_forced_refreshes_total"
    for pipeline, outcome, count in (
        ("app:token", "refreshed", 1),
        ("app:token", "cooldown", 1),
        ("app:ticket", "refreshed", 1),
    ):
        delta = metric(after, name, pipeline=pipeline, outcome=outcome, **labels) - metric(
            before, name, pipeline=pipeline, outcome=outcome, **labels
        )
        assert delta == count, (pipeline, outcome)


def test_a_failed_refresh_shows_the_v1_error_and_is_counted(kapp: Any, sim: Any) -> None:
    client = kapp.test_client()
    before = client.get("/metrics").get_data(as_text=True)
    sim.app_controls.inject(ACCESS_TOKEN, 403, IP_REFUSED, message="访问ip不在白名单之中 ip=203.0.113.9")
    refused = client.post(f"{API}/corps/{DEMO_WINDOW_CORPID}/refresh/app_token", headers=BEARER)
    assert refused.status_code == 502
    error = refused.get_json()["error"]
    assert error["dingtalk"]["code"] == IP_REFUSED and error["dingtalk"]["status"] == 403
    failure = by_name(state(client, DEMO_WINDOW_CORPID))["app_token"]["failure"]
    assert failure["errcode"] == IP_REFUSED and "203.0.113.9" in failure["errmsg"]
    assert "白名单" in failure["hint"] and failure["dingtalk"].startswith("访问ip不在白名单之中")
    after = client.get("/metrics").get_data(as_text=True)
    for name, labels in (
        (
            "dtgw_forced_refreshes_total",
            {"corpid": DEMO_WINDOW_CORPID, "pipeline": "app:token", "trigger": "console", "outcome": "error"},
        ),
        ("dtgw_credential_fetches_total", {"corpid": DEMO_WINDOW_CORPID, "pipeline": "app:token", "outcome": "error"}),
        ("dtgw_upstream_calls_total", {"api": APP_TOKEN.api, "errcode": IP_REFUSED}),
    ):
        assert metric(after, name, **labels) - metric(before, name, **labels) == 1, name


# -- metrics of the app pipelines and the v1.0 calls -------------------------------------------------------------
def test_app_pipelines_and_v1_calls_have_their_own_metric_labels(kapp: Any, sim: Any) -> None:
    client = kapp.test_client()
    before = client.get("/metrics").get_data(as_text=True)
    assert window_login(client, sim, "vfollower0001").status_code == 200  # window token, statuses, org token
    assert window_config(client).status_code == 200  # window ticket
    after = client.get("/metrics").get_data(as_text=True)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    fetches = "dtgw_credential_fetches_total"
    assert delta(fetches, corpid=DEMO_WINDOW_CORPID, pipeline="app:token", outcome="ok") == 1
    assert delta(fetches, corpid=DEMO_WINDOW_CORPID, pipeline="app:ticket", outcome="ok") == 1
    assert delta(fetches, corpid=DEMO_ORG_CORPID, pipeline="app:token", outcome="ok") == 1  # --map-via's own token
    calls = "dtgw_upstream_calls_total"
    assert delta(calls, api=APP_TOKEN.api, errcode="200") == 2
    assert delta(calls, api=APP_TICKET.api, errcode="200") == 1
    assert delta(calls, api=FOLLOWER_STATUSES, errcode="200") == 1
    assert delta(calls, api="topapi/v2/user/getuserinfo", errcode="0") == 1
    assert delta(calls, api="topapi/user/getbyunionid", errcode="0") == 1
    # None of it is counted under a legacy pipeline or API.
    assert delta(fetches, corpid=DEMO_WINDOW_CORPID, pipeline="channel:token", outcome="ok") == 0
    assert delta(calls, api="gettoken", errcode="0") == 0


# -- trace -----------------------------------------------------------------------------------------------------
def test_trace_shows_app_kind_follower_id_and_string_errcodes(kapp: Any, sim: Any) -> None:
    client = kapp.test_client()
    linked = window_login(client, sim, "vfollower0001")
    assert linked.status_code == 200 and linked.get_json()["userid"] == "manager0001"
    unfollowed = window_login(client, sim, "vfollower0004")
    assert unfollowed.status_code == 403 and unfollowed.get_json()["error"]["code"] == "not_following"
    sim.app_controls.inject(FOLLOWER_STATUSES, 403, IP_REFUSED, message="访问ip不在白名单之中")
    whitelisted = window_login(client, sim, "vfollower0002")
    assert whitelisted.status_code == 502

    trace = client.get(f"{API}/corps/{DEMO_WINDOW_CORPID}/trace", headers=BEARER).get_json()
    entries = trace["entries"]
    assert [e["outcome"] for e in entries] == ["upstream_error", "not_following", "linked"]
    assert all(e["app_kind"] == "service-window" and e["kind"] == "login" for e in entries)
    assert [e.get("follower_id") for e in entries[1:]] == ["vfollower0004", "vfollower0001"]
    assert entries[2]["userid"] == "manager0001" and entries[2]["follow_cached"] is False
    (code,) = entries[0]["errcodes"]
    assert code["errcode"] == IP_REFUSED  # was dropped: only int errcodes survived the console
    assert "白名单" in code["hint"] and code["dingtalk"].startswith("访问ip不在白名单之中")
    assert entries[0]["request_id"] == whitelisted.headers["X-Request-Id"]
    assert "not_following" in trace["outcomes"]
    only = client.get(f"{API}/corps/{DEMO_WINDOW_CORPID}/trace?outcome=not_following", headers=BEARER).get_json()
    assert [e["follower_id"] for e in only["entries"]] == ["vfollower0004"]

    overview = {c["corpid"]: c for c in client.get(f"{API}/corps", headers=BEARER).get_json()["corps"]}
    assert overview[DEMO_WINDOW_CORPID]["kind"] == "service-window"
    assert overview[DEMO_WINDOW_CORPID]["latest"]["errcodes"][0]["errcode"] == IP_REFUSED
    assert overview[DEMO_WINDOW_CORPID]["recent_failures"] == 2


def test_trace_view_keeps_int_and_string_errcodes_and_drops_junk() -> None:
    from support.traces import trace_entry_view

    view = trace_entry_view({"kind": "login", "errcodes": [60121, "60020", IP_REFUSED, None, True, "", {"x": 1}]})
    assert [c["errcode"] for c in view["errcodes"]] == [60121, 60020, IP_REFUSED]
    assert view["hint"] == view["errcodes"][0]["hint"] and "找不到该 unionid 对应的用户" in view["hint"]
    assert trace_entry_view({"errcodes": "60121"})["errcodes"] == []  # not a list: nothing made up from it


# -- self-test -------------------------------------------------------------------------------------------------
def test_self_test_of_a_current_kind(kapp: Any) -> None:
    client = kapp.test_client()
    result = client.post(f"{API}/corps/{DEMO_WINDOW_CORPID}/self-test", headers=BEARER).get_json()
    assert result["ok"] is True and result["kind"] == "service-window"
    assert [(r["pipeline"], r["ok"]) for r in result["results"]] == [
        ("app", True),
        ("ticket", True),
        ("appkey", True),
        ("org", True),
        ("map_via", True),
        ("mapping", True),
    ]
    assert len(result["results"][0]["fingerprint"]) == 10

    register(kapp, replace(WINDOW, app_secret="not-the-app-secret"))
    result = client.post(f"{API}/corps/{DEMO_WINDOW_CORPID}/self-test", headers=BEARER).get_json()
    assert result["ok"] is False
    app = result["results"][0]
    assert (app["pipeline"], app["ok"], app["errcode"]) == ("app", False, "invalidClientIdOrSecret")
    assert "or the appSecret was reset" in app["diagnosis"]
    assert [r["pipeline"] for r in result["results"] if r["skipped"]] == ["ticket", "org"]
    assert "not-the-app-secret" not in str(result)


# -- nothing in full, and the page in a browser ------------------------------------------------------------------
def test_no_console_answer_about_a_current_kind_shows_a_secret(kapp: Any, sim: Any) -> None:
    client = kapp.test_client()
    assert window_login(client, sim, "vfollower0001").status_code == 200
    assert window_config(client).status_code == 200
    answers = [
        client.get(f"{API}/corps", headers=BEARER),
        client.get(f"{API}/corps/{DEMO_WINDOW_CORPID}", headers=BEARER),
        client.get(f"{API}/corps/{DEMO_WINDOW_CORPID}/trace", headers=BEARER),
        client.post(f"{API}/corps/{DEMO_WINDOW_CORPID}/refresh/app_ticket", headers=BEARER),
        client.post(f"{API}/corps/{DEMO_WINDOW_CORPID}/refresh/app_token", headers=BEARER),
        client.post(f"{API}/corps/{DEMO_WINDOW_CORPID}/self-test", headers=BEARER),
        client.get(f"{API}/corps/{DEMO_ORG_CORPID}", headers=BEARER),
    ]
    secrets = {DEMO_WINDOW_APP_SECRET, DEMO_APP_SECRET, ADMIN_TOKEN}
    for corpid in (DEMO_WINDOW_CORPID, DEMO_ORG_CORPID):
        for cache in ("app_token", "app_ticket"):
            cred = getattr(app_client(kapp, corpid), cache).peek()
            if cred is not None:
                secrets.add(cred.value)
    secrets |= {t.value for t in sim.apps.tokens.values()} | {t.value for t in sim.apps.current_ticket.values()}
    assert len(secrets) > 5
    for response in answers:
        assert response.status_code == 200, response.get_json()
        text = response.get_data(as_text=True)
        assert not [s for s in secrets if s in text]


@pytest.fixture
def live(sim_server: SimulatorServer) -> Iterator[tuple[str, Any]]:
    """The gateway on a loopback port, for the browser."""
    need_chromium()
    app = build(sim_server)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        get_runtime(app).close()


@pytest.mark.browser
def test_console_of_a_service_window_in_a_browser(live: tuple[str, Any], browser: Any, sim: Any) -> None:
    from playwright.sync_api import expect

    base, app = live
    client = app.test_client()
    assert window_login(client, sim, "vfollower0001").status_code == 200
    sim.app_controls.inject(FOLLOWER_STATUSES, 403, IP_REFUSED, message="访问ip不在白名单之中")
    assert window_login(client, sim, "vfollower0002").status_code == 502

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/support")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#login-submit")
    page.click(f'#corp-list a[data-corpid="{DEMO_WINDOW_CORPID}"]')
    expect(page.locator("#corp-kind")).to_have_text("service-window")
    facts = page.locator("#corp-facts")
    expect(facts).to_contain_text(DEMO_WINDOW_APP_KEY)
    expect(facts).to_contain_text(f"{DEMO_ORG_CORPID} (by unionid)")
    expect(facts).to_contain_text("internal app registered")
    expect(page.locator('#corp-facts dd[data-fact="require_follow"]')).to_have_text("yes")
    expect(page.locator("#pipeline-rows tr")).to_have_count(2)
    expect(page.locator("#pipeline-app_token")).to_contain_text("是 yes")
    expect(page.locator("#sig-form")).to_be_visible()  # it compares with the app's own ticket

    failed = page.locator("tr.trace-row.outcome-upstream_error")
    expect(failed).to_contain_text(IP_REFUSED)
    expect(failed).to_contain_text("访问ip不在白名单之中")
    expect(failed).to_contain_text("login · service-window")
    expect(page.locator("tr.trace-row.outcome-linked")).to_contain_text("follower_id vfollower0001")

    page.click("#refresh-app_ticket")
    expect(page.locator("#refresh-result")).to_contain_text("app_ticket: 已刷新")
    page.click("#selftest-run")
    expect(page.locator('#selftest-results li[data-pipeline="mapping"]')).to_contain_text("mapping: OK")
    expect(page.locator('#selftest-results li[data-pipeline="app"]')).to_contain_text("app: OK")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "support-kinds-service-window.png"), full_page=True)
    assert errors == []
