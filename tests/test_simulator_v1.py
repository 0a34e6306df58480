"""The simulator's current generation (dingtalk-oapi.md §7.1-7.3): app tokens and tickets at api.dingtalk.com, the
v1.0 error model, the controls in front of it, and topapi getuserinfo for codes from dd.requestAuthCode."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from sandbox.model import SimulatorError
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from tests.helpers import APP_CORPID, APP_KEY, APP_MEMBER, APP_SECRET, add_internal_app

ACCESS_TOKEN = "v1.0/oauth2/accessToken"
JSAPI_TICKETS = "v1.0/oauth2/jsapiTickets"
USER_INFO = "topapi/v2/user/getuserinfo"


@pytest.fixture
def v1(sim_server: SimulatorServer) -> SimulatorServer:
    add_internal_app(sim_server.sim)
    return sim_server


def post(server: SimulatorServer, path: str, body: dict[str, Any], **kw: Any) -> requests.Response:
    return requests.post(f"{server.base_url}/{path}", json=body, timeout=5, **kw)


def app_token(server: SimulatorServer) -> str:
    resp = post(server, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["accessToken"])


def ticket(server: SimulatorServer, token: str) -> requests.Response:
    return post(server, JSAPI_TICKETS, {}, headers={"x-acs-dingtalk-access-token": token})


def assert_v1_error(resp: requests.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code
    assert body["message"] and body["requestid"]


def test_access_token_is_the_same_within_its_lifetime(v1: SimulatorServer) -> None:
    resp = post(v1, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET})
    assert resp.json()["expireIn"] == 7200
    assert app_token(v1) == resp.json()["accessToken"]
    v1.sim.advance(7201)
    assert app_token(v1) != resp.json()["accessToken"]


def test_the_lifetime_control_shortens_app_tokens_and_tickets(v1: SimulatorServer) -> None:
    v1.sim.set_lifetime(20)
    resp = post(v1, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET})
    token = resp.json()["accessToken"]
    assert resp.json()["expireIn"] == 20
    first = ticket(v1, token).json()
    assert first["expireIn"] == 20
    v1.sim.advance(19)
    renewed = ticket(v1, token).json()
    assert renewed["jsapiTicket"] == first["jsapiTicket"] and renewed["expireIn"] == 20
    v1.sim.advance(21)
    assert_v1_error(ticket(v1, token), 400, "InvalidAuthentication")
    assert app_token(v1) != token


@pytest.mark.parametrize(
    "body", [{"appKey": APP_KEY, "appSecret": "wrong"}, {"appKey": "nobody", "appSecret": APP_SECRET}, {}]
)
def test_wrong_app_key_or_secret_is_invalid_client(v1: SimulatorServer, body: dict[str, str]) -> None:
    assert_v1_error(post(v1, ACCESS_TOKEN, body), 400, "invalidClientIdOrSecret")


def test_jsapi_ticket_is_renewed_not_replaced(v1: SimulatorServer) -> None:
    token = app_token(v1)
    first = ticket(v1, token)
    assert first.status_code == 200 and first.json()["expireIn"] == 7200
    v1.sim.advance(3600)
    again = ticket(v1, token)
    assert again.json()["jsapiTicket"] == first.json()["jsapiTicket"]
    assert again.json()["expireIn"] == 7200


def test_renewed_ticket_lives_at_most_a_day(v1: SimulatorServer) -> None:
    first = ticket(v1, app_token(v1)).json()["jsapiTicket"]
    for _ in range(12):
        v1.sim.advance(7000)
        ticket(v1, app_token(v1))
    capped = ticket(v1, app_token(v1)).json()  # 84,000 s on: still the same, but only until 24 h after creation
    assert capped["jsapiTicket"] == first and 2390 <= capped["expireIn"] <= 2400
    v1.sim.advance(2401)
    assert ticket(v1, app_token(v1)).json()["jsapiTicket"] != first


@pytest.mark.parametrize("token", ["made-up", None])
def test_bad_token_is_invalid_authentication(v1: SimulatorServer, token: str | None) -> None:
    headers = {"x-acs-dingtalk-access-token": token} if token else {}
    assert_v1_error(post(v1, JSAPI_TICKETS, {}, headers=headers), 400, "InvalidAuthentication")


def test_expired_and_revoked_tokens_are_invalid_authentication(v1: SimulatorServer) -> None:
    token = app_token(v1)
    v1.sim.advance(7201)
    assert_v1_error(ticket(v1, token), 400, "InvalidAuthentication")
    fresh = app_token(v1)
    v1.sim.apps.revoke_app_tokens(APP_KEY)
    assert_v1_error(ticket(v1, fresh), 400, "InvalidAuthentication")


def test_token_in_the_query_is_refused(v1: SimulatorServer) -> None:
    resp = post(v1, f"{JSAPI_TICKETS}?access_token={app_token(v1)}", {})
    assert_v1_error(resp, 400, "AuthenticationFailed.MissingParameter")


def test_qps_limit_per_app_and_api(v1: SimulatorServer) -> None:
    v1.sim.apps.add_app(APP_CORPID, app_key="other-app", app_secret="s2")
    requests.post(f"{v1.base_url}/_sim/app/qps", json={"api": ACCESS_TOKEN, "limit": 2}, timeout=5)
    answers = [post(v1, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET}) for _ in range(3)]
    assert [r.status_code for r in answers[:2]] == [200, 200]
    assert_v1_error(answers[2], 403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
    # Another app, or another API of the same app, has its own budget.
    assert post(v1, ACCESS_TOKEN, {"appKey": "other-app", "appSecret": "s2"}).status_code == 200
    token = answers[0].json()["accessToken"]
    assert ticket(v1, token).status_code == 200
    v1.sim.advance(1.5)
    assert post(v1, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET}).status_code == 200


def test_system_busy_is_injected_for_a_number_of_calls(v1: SimulatorServer) -> None:
    body = {"api": ACCESS_TOKEN, "status": 429, "code": "systemBusy", "times": 2}
    assert requests.post(f"{v1.base_url}/_sim/app/inject", json=body, timeout=5).json()["errcode"] == 0
    credentials = {"appKey": APP_KEY, "appSecret": APP_SECRET}
    assert_v1_error(post(v1, ACCESS_TOKEN, credentials), 429, "systemBusy")
    assert_v1_error(post(v1, ACCESS_TOKEN, credentials), 429, "systemBusy")
    assert post(v1, ACCESS_TOKEN, credentials).status_code == 200
    calls = requests.get(f"{v1.base_url}/_sim/app/calls", params={"api": ACCESS_TOKEN}, timeout=5).json()
    assert calls == {"calls": 3}


def mint(server: SimulatorServer, userid: str = APP_MEMBER["userid"]) -> str:
    body = {"corpid": APP_CORPID, "client_id": APP_KEY, "userid": userid}
    return str(requests.post(f"{server.base_url}/_client/app_code", json=body, timeout=5).json()["code"])


def test_getuserinfo_answers_the_member_once(v1: SimulatorServer) -> None:
    code = mint(v1)
    token = app_token(v1)
    resp = post(v1, f"{USER_INFO}?access_token={token}", {"code": code})
    assert resp.status_code == 200
    body = resp.json()
    assert body["errcode"] == 0 and body["request_id"]
    result = body["result"]
    assert {k: result[k] for k in APP_MEMBER} == APP_MEMBER
    assert result["sys"] is False and result["sys_level"] == 0
    again = post(v1, f"{USER_INFO}?access_token={token}", {"code": code}).json()
    assert again["errcode"] == 40078


def test_getuserinfo_refuses_an_expired_or_unknown_code(v1: SimulatorServer) -> None:
    token = app_token(v1)
    assert post(v1, f"{USER_INFO}?access_token={token}", {"code": "made-up"}).json()["errcode"] == 40078
    code = mint(v1)
    v1.sim.advance(301)
    token = app_token(v1)
    assert post(v1, f"{USER_INFO}?access_token={token}", {"code": code}).json()["errcode"] == 40078


def test_getuserinfo_bad_token_is_88_with_sub_code(v1: SimulatorServer) -> None:
    body = post(v1, f"{USER_INFO}?access_token=made-up", {"code": mint(v1)}).json()
    assert body["errcode"] == 88 and body["sub_code"] == "40014"


def test_injected_topapi_errors_keep_the_oapi_style(v1: SimulatorServer) -> None:
    token = post(v1, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET}).json()["accessToken"]
    v1.sim.app_controls.inject_topapi(USER_INFO, 88, sub_code="40014", times=1)
    first = post(v1, f"{USER_INFO}?access_token={token}", {"code": mint(v1)})
    assert first.status_code == 200 and first.json()["errcode"] == 88 and first.json()["sub_code"] == "40014"
    assert post(v1, f"{USER_INFO}?access_token={token}", {"code": mint(v1)}).json()["errcode"] == 0  # once only
    for bad in ({"errcode": 0}, {"errcode": True}, {"errcode": 88, "times": 0}):
        with pytest.raises(SimulatorError):
            v1.sim.app_controls.inject_topapi(USER_INFO, **bad)  # type: ignore[arg-type]
    with pytest.raises(SimulatorError):
        v1.sim.app_controls.inject_topapi(ACCESS_TOKEN, 88)  # a v1.0 API takes inject(), not this


def test_code_of_another_app_is_refused(v1: SimulatorServer) -> None:
    v1.sim.apps.add_app(APP_CORPID, app_key="other-app", app_secret="s2")
    other = post(v1, ACCESS_TOKEN, {"appKey": "other-app", "appSecret": "s2"}).json()["accessToken"]
    assert post(v1, f"{USER_INFO}?access_token={other}", {"code": mint(v1)}).json()["errcode"] == 40078


def test_virtual_org_app_answers_the_follower_in_the_virtual_org() -> None:
    sim = Simulator(rate_limit=None)
    sim.apps.add_org("real-org")
    sim.apps.add_org("virtual-org", virtual_of="real-org")
    sim.apps.add_member("virtual-org", userid="follower-1", unionid="u-f1", name="李四")
    sim.apps.add_app("virtual-org", app_key="window-app", app_secret="w")
    with SimulatorServer(sim) as server:
        token = post(server, ACCESS_TOKEN, {"appKey": "window-app", "appSecret": "w"}).json()["accessToken"]
        code = sim.apps.mint_app_code("virtual-org", "window-app", "follower-1")
        result = post(server, f"{USER_INFO}?access_token={token}", {"code": code}).json()["result"]
    assert result["userid"] == "follower-1"
    with pytest.raises(ValueError):
        sim.apps.mint_app_code("real-org", "window-app", "follower-1")  # the app lives in the virtual org


def test_mint_app_code_is_on_the_simulator_too(v1: SimulatorServer) -> None:
    code = v1.sim.mint_app_code(APP_CORPID, APP_KEY, APP_MEMBER["userid"])
    body = post(v1, f"{USER_INFO}?access_token={app_token(v1)}", {"code": code}).json()
    assert body["result"]["userid"] == APP_MEMBER["userid"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/app/qps", {"api": "gettoken", "limit": 1}),
        ("/_sim/app/qps", {"api": ACCESS_TOKEN, "limit": 0}),
        ("/_sim/app/inject", {"api": ACCESS_TOKEN, "status": 200, "code": "x"}),
        ("/_sim/app/inject", {"api": USER_INFO, "status": 429, "code": "systemBusy"}),
        ("/_sim/app/latency", {"api": ACCESS_TOKEN, "seconds": -1}),
        ("/_client/app_code", {"corpid": APP_CORPID, "client_id": "nobody", "userid": APP_MEMBER["userid"]}),
    ],
)
def test_controls_refuse_bad_input(v1: SimulatorServer, path: str, body: dict[str, Any]) -> None:
    assert requests.post(f"{v1.base_url}{path}", json=body, timeout=5).json()["errcode"] == 40035


def test_latency_delays_the_answer(v1: SimulatorServer) -> None:
    body = {"api": ACCESS_TOKEN, "seconds": 0.3}
    assert requests.post(f"{v1.base_url}/_sim/app/latency", json=body, timeout=5).json()["errcode"] == 0
    resp = post(v1, ACCESS_TOKEN, {"appKey": APP_KEY, "appSecret": APP_SECRET})
    assert resp.status_code == 200 and resp.elapsed.total_seconds() >= 0.3
