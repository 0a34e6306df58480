"""`POST /channel/login` for the current-generation kinds (issue 17): an employee of an internal app, and a service
window's followers mapped (or not) to the real org, against a real Redis and the simulator (dingtalk-oapi.md §7).

The demo data (sandbox/demo.py): the real org DEMO_ORG_CORPID has an internal app and two members (an employee and
an external contact); its service window's virtual org DEMO_WINDOW_CORPID has four followers: one is the employee,
one the external contact, one nobody in the real org, and one has unfollowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from channel.session import verify_token
from corp.registry import INTERNAL, SERVICE_WINDOW, Corp
from sandbox.demo import (
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_FOLLOWERS,
    DEMO_MEMBERS,
    DEMO_ORG_CORPID,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from tests.helpers import ORIGIN, in_background, make_config
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

USER_INFO = "topapi/v2/user/getuserinfo"
BY_UNIONID = "topapi/user/getbyunionid"
STATUSES = "v1.0/link/followers/statuses"
APP_TOKEN = "v1.0/oauth2/accessToken"
QPS = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"

EMPLOYEE = DEMO_MEMBERS[0]
FOLLOWER_EMPLOYEE, FOLLOWER_EXTERNAL, FOLLOWER_UNMAPPED, FOLLOWER_GONE = DEMO_FOLLOWERS


def internal_app(**kw: Any) -> Corp:
    fields: dict[str, Any] = {
        "corpid": DEMO_ORG_CORPID,
        "kind": INTERNAL,
        "agent_id": DEMO_APP_AGENT_ID,
        "origins": (ORIGIN,),
        "sign_hash": "sha256",
        "app_key": DEMO_APP_KEY,
        "app_secret": DEMO_APP_SECRET,
    }
    return Corp(**{**fields, **kw})


def window_app(**kw: Any) -> Corp:
    fields: dict[str, Any] = {
        "corpid": DEMO_WINDOW_CORPID,
        "kind": SERVICE_WINDOW,
        "agent_id": DEMO_WINDOW_AGENT_ID,
        "origins": (ORIGIN,),
        "sign_hash": "sha256",
        "app_key": DEMO_WINDOW_APP_KEY,
        "app_secret": DEMO_WINDOW_APP_SECRET,
        "map_via": DEMO_ORG_CORPID,
        "require_follow": True,
    }
    return Corp(**{**fields, **kw})


@pytest.fixture
def gateway(redis_app: Any) -> Iterator[Any]:
    """The gateway on a real Redis with the demo's internal app and service window registered."""
    registry = get_runtime(redis_app).registry
    registry.add(internal_app())
    registry.add(window_app())
    yield redis_app


def register(app: Any, corp: Corp) -> None:
    get_runtime(app).registry.add(corp, renew=True)


def code_for(sim: Any, corpid: str, app_key: str, userid: str) -> str:
    return str(sim.mint_app_code(corpid, app_key, userid))


def employee_code(sim: Any, userid: str = EMPLOYEE["userid"]) -> str:
    return code_for(sim, DEMO_ORG_CORPID, DEMO_APP_KEY, userid)


def follower_code(sim: Any, follower: dict[str, Any]) -> str:
    return code_for(sim, DEMO_WINDOW_CORPID, DEMO_WINDOW_APP_KEY, follower["userid"])


def login(app: Any, corpid: str, code: str) -> Any:
    return app.test_client().post("/channel/login", json={"corpid": corpid, "code": code})


def claims(app: Any, body: dict[str, Any]) -> dict[str, Any]:
    return verify_token(get_runtime(app).keys, body["token"], issuer="http://localhost", corpid=body["corpid"])


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_json()
    error = resp.get_json()["error"]
    assert error["code"] == code
    assert error["message"] and error["hint"] and error["request_id"]
    return dict(error)


# -- each kind, each kind of person ------------------------------------------------------------------------------


def test_an_employee_signs_in_with_an_internal_app(gateway: Any, sim_server: Any) -> None:
    sim = sim_server.sim
    resp = login(gateway, DEMO_ORG_CORPID, employee_code(sim))
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert {k: v for k, v in body.items() if k not in ("token", "expires_in")} == {
        "corpid": DEMO_ORG_CORPID,
        "kind": "internal",
        "openid": None,
        "unionid": EMPLOYEE["unionid"],
        "follower_id": None,
        "userid": EMPLOYEE["userid"],
        "contact_type": 0,
        "linked": True,
    }
    token = claims(gateway, body)
    assert token["sub"] == EMPLOYEE["userid"]
    assert (token["kind"], token["userid"], token["corpid"], token["linked"]) == (
        "internal",
        EMPLOYEE["userid"],
        DEMO_ORG_CORPID,
        True,
    )
    # One upstream call per login once the app token is cached: nothing to map for an employee.
    sim.app_controls.reset_calls()
    assert login(gateway, DEMO_ORG_CORPID, employee_code(sim)).status_code == 200
    assert sim.app_controls.calls() == 1
    assert sim.app_controls.calls(USER_INFO) == 1


@pytest.mark.parametrize(
    ("follower", "userid", "contact_type"),
    [
        (FOLLOWER_EMPLOYEE, "manager0001", 0),
        (FOLLOWER_EXTERNAL, "ext0001", 1),
        (FOLLOWER_UNMAPPED, None, None),
    ],
    ids=["mapped-to-employee", "mapped-to-external-contact", "not-in-the-real-org"],
)
def test_a_follower_signs_in_and_is_mapped_to_the_real_org(
    gateway: Any, sim_server: Any, follower: dict[str, Any], userid: str | None, contact_type: int | None
) -> None:
    sim = sim_server.sim
    resp = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, follower))
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["kind"] == "service-window"
    assert body["corpid"] == DEMO_WINDOW_CORPID
    assert body["follower_id"] == follower["userid"]
    assert body["unionid"] == follower["unionid"]
    assert body["openid"] is None
    assert (body["userid"], body["contact_type"], body["linked"]) == (userid, contact_type, userid is not None)
    token = claims(gateway, body)
    assert token["sub"] == (userid or f"unionid:{follower['unionid']}")
    assert token["follower_id"] == follower["userid"]
    assert token["linked"] is (userid is not None)


def test_a_returning_follower_costs_one_upstream_call(gateway: Any, sim_server: Any) -> None:
    sim = sim_server.sim
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EXTERNAL)).status_code == 200
    assert sim.app_controls.calls(BY_UNIONID) == 1
    assert sim.app_controls.calls(STATUSES) == 1
    sim.app_controls.reset_calls()
    resp = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EXTERNAL))
    assert resp.get_json()["userid"] == "ext0001"
    assert sim.app_controls.calls() == 1  # getuserinfo; the follow status and the link come from the cache
    assert sim.app_controls.calls(USER_INFO) == 1


def test_an_unfollowed_person_is_refused_with_require_follow(gateway: Any, sim_server: Any) -> None:
    sim = sim_server.sim
    error = assert_error(login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_GONE)), 403, "not_following")
    assert "follow" in error["hint"]
    assert "dingtalk" not in error  # DingTalk answered fine; the refusal is the gateway's
    # Without --require-follow the same person signs in (not in the real org: unlinked).
    register(gateway, window_app(require_follow=False))
    resp = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_GONE))
    assert resp.status_code == 200
    assert resp.get_json()["linked"] is False
    assert sim.app_controls.calls(STATUSES) == 1  # asked once, when it mattered


def test_the_follow_status_is_cached_for_at_most_the_setting(sim_server: Any, real_redis: Any, redis_url: str) -> None:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=redis_url, GATEWAY_FOLLOW_CACHE_TTL=1))
    try:
        get_runtime(app).registry.add(internal_app())
        get_runtime(app).registry.add(window_app())
        sim = sim_server.sim
        assert login(app, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
        sim.followers.unfollow(DEMO_WINDOW_CORPID, FOLLOWER_EMPLOYEE["userid"])
        # Within the TTL the cached FOLLOWED may still admit them; past it, DingTalk's answer counts.
        key = f"dtgw:v1:{{{DEMO_WINDOW_CORPID}}}:follow:{FOLLOWER_EMPLOYEE['userid']}"
        assert 0 < real_redis.pttl(key) <= 1000
        real_redis.delete(key)  # as if the second passed
        resp = login(app, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE))
        assert_error(resp, 403, "not_following")
    finally:
        get_runtime(app).close()


def test_the_follow_cache_setting_is_bounded_by_the_contract(sim_server: Any) -> None:
    from app import create_app

    with pytest.raises(RuntimeError, match="GATEWAY_FOLLOW_CACHE_TTL"):
        create_app(make_config(sim_server, GATEWAY_FOLLOW_CACHE_TTL=61))


@pytest.mark.parametrize("recognised", ["unionid", "associated_unionid"])
def test_map_by_names_the_id_the_real_org_recognises(gateway: Any, sim_server: Any, recognised: str) -> None:
    sim = sim_server.sim
    sim.followers.set_recognised(DEMO_ORG_CORPID, [recognised])
    other = "associated_unionid" if recognised == "unionid" else "unionid"
    register(gateway, window_app(map_by=other))
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).get_json()["linked"] is False
    register(gateway, window_app(map_by=recognised))  # a new registration: its cached links are gone
    body = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).get_json()
    assert (body["userid"], body["linked"]) == ("manager0001", True)


def test_a_window_without_map_via_signs_followers_in_unlinked(gateway: Any, sim_server: Any) -> None:
    sim = sim_server.sim
    register(gateway, window_app(map_via=None))
    body = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).get_json()
    assert (body["follower_id"], body["userid"], body["linked"]) == (FOLLOWER_EMPLOYEE["userid"], None, False)
    assert sim.app_controls.calls(BY_UNIONID) == 0


def test_map_via_an_unregistered_org_is_a_clean_configuration_error(gateway: Any, sim_server: Any) -> None:
    register(gateway, window_app(map_via="dingnobody0001"))
    resp = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim_server.sim, FOLLOWER_EMPLOYEE))
    error = assert_error(resp, 502, "upstream_error")
    assert "--kind internal" in error["hint"]


# -- failures, in the contract's shape ---------------------------------------------------------------------------


@pytest.mark.parametrize("corpid", [DEMO_ORG_CORPID, DEMO_WINDOW_CORPID])
def test_a_reused_code_is_code_invalid(gateway: Any, sim_server: Any, corpid: str) -> None:
    sim = sim_server.sim
    code = employee_code(sim) if corpid == DEMO_ORG_CORPID else follower_code(sim, FOLLOWER_EMPLOYEE)
    assert login(gateway, corpid, code).status_code == 200
    error = assert_error(login(gateway, corpid, code), 401, "code_invalid")
    assert error["dingtalk"]["errcode"] == 40078


def test_a_persistent_invalid_authentication_costs_exactly_two_calls(gateway: Any, sim_server: Any) -> None:
    sim = sim_server.sim
    sim.app_controls.inject(STATUSES, 400, "InvalidAuthentication", times=10, message="不合法的access_token")
    resp = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE))
    error = assert_error(resp, 502, "upstream_error")
    assert error["dingtalk"] == {"status": 400, "code": "InvalidAuthentication", "message": "不合法的access_token"}
    assert sim.app_controls.calls(STATUSES) == 2
    assert sim.app_controls.calls(APP_TOKEN) == 2  # the first fetch, and one refresh after the refusal


def test_a_qps_limit_is_honoured_by_every_worker(gateway: Any, sim_server: Any, redis_url: str) -> None:
    """Without pacing (GATEWAY_UPSTREAM_RATE=0): a window every worker keeps off the API for."""
    from app import create_app

    sim = sim_server.sim
    get_runtime(gateway).upstream.pacer.rate = 0
    sim.app_controls.inject(STATUSES, 403, QPS, message="当前请求被限流")
    resp = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE))
    error = assert_error(resp, 503, "upstream_unavailable")
    assert error["dingtalk"]["code"] == QPS
    assert int(resp.headers["Retry-After"]) >= 1
    # Another worker (its own app, the same Redis) keeps off the API for the window instead of calling it.
    other = create_app(make_config(sim_server, REDIS_URL=redis_url, GATEWAY_UPSTREAM_RATE=0))
    try:
        resp = login(other, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE))
        assert_error(resp, 503, "upstream_unavailable")
        assert int(resp.headers["Retry-After"]) >= 1
    finally:
        get_runtime(other).close()
    assert sim.app_controls.calls(STATUSES) == 1


def test_a_paced_qps_refusal_queues_every_worker_behind_a_short_pause(
    gateway: Any, sim_server: Any, redis_url: str
) -> None:
    """With pacing (the default) a QPS answer pauses the app's API for every worker; the refused login and another
    worker's login queue behind the pause and succeed, rather than being refused for the window."""
    from app import create_app

    sim = sim_server.sim
    sim.app_controls.inject(STATUSES, 403, QPS, message="当前请求被限流")
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(STATUSES) == 2  # refused once, then queued behind the pause
    sim.app_controls.inject(STATUSES, 403, QPS, message="当前请求被限流")
    other = create_app(make_config(sim_server, REDIS_URL=redis_url))
    try:
        # Followers whose status is not cached yet, so both ask DingTalk.
        first = in_background(lambda: login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EXTERNAL)))
        second = login(other, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_UNMAPPED))
        assert first(30).status_code == 200 and second.status_code == 200
    finally:
        get_runtime(other).close()
    assert sim.app_controls.calls(STATUSES) == 5  # one more refusal, and nothing else refused


def test_a_wrong_app_secret_is_explained(gateway: Any, sim_server: Any) -> None:
    register(gateway, internal_app(app_secret="not-the-secret"))
    resp = login(gateway, DEMO_ORG_CORPID, employee_code(sim_server.sim))
    error = assert_error(resp, 502, "upstream_error")
    assert error["dingtalk"]["code"] == "invalidClientIdOrSecret"
    assert error["dingtalk"]["status"] == 400
    assert "appSecret" in error["hint"] or "AppSecret" in error["hint"]
    assert "not-the-secret" not in resp.get_data(as_text=True)


def test_the_login_trace_says_which_kind_and_who(gateway: Any, sim_server: Any) -> None:
    from gateway import trace

    sim = sim_server.sim
    login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EXTERNAL))
    login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_GONE))
    entries = trace.recent(get_runtime(gateway).store, DEMO_WINDOW_CORPID, count=10)
    outcomes = {e["outcome"]: e for e in entries}
    assert outcomes["linked"]["app_kind"] == "service-window"
    assert outcomes["linked"]["follower_id"] == FOLLOWER_EXTERNAL["userid"]
    assert outcomes["not_following"]["step"] == "follow_status"
    assert outcomes["not_following"]["follower_id"] == FOLLOWER_GONE["userid"]


def test_the_session_token_is_a_jwt_with_every_contract_claim(gateway: Any, sim_server: Any) -> None:
    body = login(gateway, DEMO_WINDOW_CORPID, follower_code(sim_server.sim, FOLLOWER_EMPLOYEE)).get_json()
    token = jwt.decode(body["token"], options={"verify_signature": False})
    for claim in ("iss", "sub", "corpid", "kind", "unionid", "openid", "follower_id", "userid", "contact_type"):
        assert claim in token
    assert token["linked"] is True


# -- events act on what logins cache --------------------------------------------------------------------------


def follow_event(kind: str, userid: str) -> dict[str, Any]:
    """A service window's follow event as §7.4 describes it."""
    return {"EventType": kind, "data": [{"userId": userid, "name": "x", "type": "1", "timestamp": 1700000000000}]}


def test_follow_events_update_the_cached_follow_status(gateway: Any, sim_server: Any) -> None:
    from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, Sender

    sim = sim_server.sim
    register(gateway, window_app(callback_token=CALLBACK_TOKEN, aes_key=AES_KEY))
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_WINDOW_CORPID)
    url = f"/ding/callback/{DEMO_WINDOW_CORPID}"
    who = FOLLOWER_EMPLOYEE["userid"]
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(STATUSES) == 1
    # The person unfollows: DingTalk pushes the event, and the next login is refused at once (no status call, no
    # waiting for the cached FOLLOWED to expire).
    sim.followers.unfollow(DEMO_WINDOW_CORPID, who)
    unfollowed = sender.push(gateway.test_client(), follow_event("official_account_unfollow", who), url=url)
    assert unfollowed.status_code == 200
    assert_error(login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)), 403, "not_following")
    # They follow again: admitted at once.
    sim.followers.follow(DEMO_WINDOW_CORPID, who)
    followed = sender.push(gateway.test_client(), follow_event("official_account_follow", who), url=url)
    assert followed.status_code == 200
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(STATUSES) == 1


def test_a_leave_event_in_the_real_org_drops_a_followers_cached_link(gateway: Any, sim_server: Any) -> None:
    from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, Sender

    sim = sim_server.sim
    register(gateway, internal_app(callback_token=CALLBACK_TOKEN, aes_key=AES_KEY))
    register(gateway, window_app())  # re-registered after its real org (a replaced registration drops nothing of it)
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).get_json()["linked"] is True
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(BY_UNIONID) == 1  # the second login used the cached link
    leave = {"EventType": "user_leave_org", "UserId": ["manager0001"], "TimeStamp": "1700000000000"}
    resp = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_ORG_CORPID).push(
        gateway.test_client(), leave, url=f"/ding/callback/{DEMO_ORG_CORPID}"
    )
    assert resp.status_code == 200
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(BY_UNIONID) == 2  # the link was asked for again


# -- the support signature checker knows an app's own ticket -------------------------------------------------------


def test_the_signature_checker_compares_with_the_apps_own_ticket(gateway: Any) -> None:
    from support.signatures import check_signature

    page = f"{ORIGIN}/app?x=1"
    cfg = gateway.test_client().get(
        "/channel/config", query_string={"corpid": DEMO_ORG_CORPID, "agentid": DEMO_APP_AGENT_ID, "url": page}
    )
    assert cfg.status_code == 200 and cfg.get_json()["type"] == 0
    body = cfg.get_json()
    rt = get_runtime(gateway)
    with gateway.test_request_context():
        verdict = check_signature(
            rt,
            DEMO_ORG_CORPID,
            url=page,
            nonce=body["nonceStr"],
            timestamp=body["timeStamp"],
            signature=body["signature"],
        )
    assert verdict["match"] is True, verdict
    assert verdict["ticket"]["fingerprint"] == rt.app_client(rt.corp(DEMO_ORG_CORPID)).app_ticket.peek().fingerprint
