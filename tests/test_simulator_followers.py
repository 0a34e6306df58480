"""The simulator's service window in a virtual org (dingtalk-oapi.md §7.4): follow status, the followers list with
paging, mapping a follower to the real org with topapi getbyunionid (which ids the real org recognises is a
simulator option), their controls, and the demo data of the current generation."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from sandbox.demo import (
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_FOLLOWERS,
    DEMO_ORG_CORPID,
    DEMO_PEOPLE,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from sandbox.server import SimulatorServer
from sandbox.state import Simulator

STATUSES = "v1.0/link/followers/statuses"
FOLLOWERS = "v1.0/link/followers"
GET_BY_UNIONID = "topapi/user/getbyunionid"
HEADER = "x-acs-dingtalk-access-token"
BY_USERID = {f["userid"]: f for f in DEMO_FOLLOWERS}
MANAGER, EXTERNAL, STRANGER, GONE = (f["userid"] for f in DEMO_FOLLOWERS)


def token(server: SimulatorServer, app_key: str, app_secret: str) -> str:
    body = {"appKey": app_key, "appSecret": app_secret}
    resp = requests.post(f"{server.base_url}/v1.0/oauth2/accessToken", json=body, timeout=5)
    return str(resp.json()["accessToken"])


def window_token(server: SimulatorServer) -> str:
    return token(server, DEMO_WINDOW_APP_KEY, DEMO_WINDOW_APP_SECRET)


def internal_token(server: SimulatorServer) -> str:
    return token(server, DEMO_APP_KEY, DEMO_APP_SECRET)


def get(server: SimulatorServer, api: str, tok: str | None, **params: Any) -> requests.Response:
    headers = {HEADER: tok} if tok else {}
    return requests.get(f"{server.base_url}/{api}", params=params, headers=headers, timeout=5)


def status(server: SimulatorServer, tok: str, userid: str, **params: Any) -> requests.Response:
    return get(server, STATUSES, tok, userId=userid, **params)


def by_unionid(server: SimulatorServer, tok: str, unionid: str) -> dict[str, Any]:
    url = f"{server.base_url}/{GET_BY_UNIONID}?access_token={tok}"
    return dict(requests.post(url, json={"unionid": unionid}, timeout=5).json())


def sim_post(server: SimulatorServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    return dict(requests.post(f"{server.base_url}{path}", json=body, timeout=5).json())


def assert_v1_error(resp: requests.Response, status_code: int, code: str) -> None:
    assert resp.status_code == status_code, resp.text
    assert resp.json()["code"] == code and resp.json()["requestid"]


def test_follow_status_of_demo_followers(sim_server: SimulatorServer) -> None:
    tok = window_token(sim_server)
    for f in DEMO_FOLLOWERS:
        resp = status(sim_server, tok, f["userid"])
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"result": {"status": "FOLLOWED" if f["followed"] else "UNFOLLOW"}}


def test_follow_and_unfollow_controls(sim_server: SimulatorServer) -> None:
    tok = window_token(sim_server)
    assert (
        sim_post(sim_server, "/_sim/app/follow", {"corpid": DEMO_WINDOW_CORPID, "userid": MANAGER, "followed": False})[
            "errcode"
        ]
        == 0
    )
    assert status(sim_server, tok, MANAGER).json()["result"]["status"] == "UNFOLLOW"
    sim_server.sim.followers.follow(DEMO_WINDOW_CORPID, MANAGER)
    assert status(sim_server, tok, MANAGER).json()["result"]["status"] == "FOLLOWED"
    assert sim_post(sim_server, "/_sim/app/follow", {"corpid": DEMO_WINDOW_CORPID, "userid": GONE})["errcode"] == 0
    assert status(sim_server, tok, GONE).json()["result"]["status"] == "FOLLOWED"


def test_window_app_must_not_pass_account_id(sim_server: SimulatorServer) -> None:
    resp = status(sim_server, window_token(sim_server), MANAGER, accountId=DEMO_WINDOW_CORPID)
    assert_v1_error(resp, 400, "InvalidParameter.AccountId")


def test_other_apps_must_pass_account_id(sim_server: SimulatorServer) -> None:
    tok = internal_token(sim_server)
    assert_v1_error(status(sim_server, tok, MANAGER), 400, "MissingParameter.AccountId")
    assert_v1_error(status(sim_server, tok, MANAGER, accountId="someone-elses-window"), 400, "InvalidParameter")
    resp = status(sim_server, tok, GONE, accountId=DEMO_WINDOW_CORPID)
    assert resp.status_code == 200 and resp.json()["result"]["status"] == "UNFOLLOW"


def test_follow_status_errors(sim_server: SimulatorServer) -> None:
    tok = window_token(sim_server)
    assert_v1_error(status(sim_server, tok, "nobody"), 400, "InvalidParameter")
    assert_v1_error(status(sim_server, "made-up", MANAGER), 400, "InvalidAuthentication")
    resp = requests.get(f"{sim_server.base_url}/{STATUSES}", params={"userId": MANAGER, "access_token": tok}, timeout=5)
    assert_v1_error(resp, 400, "AuthenticationFailed.MissingParameter")


def test_followers_list_pages_through_those_who_follow(sim_server: SimulatorServer) -> None:
    tok = window_token(sim_server)
    first = get(sim_server, FOLLOWERS, tok, maxResults=2).json()["result"]
    assert len(first["userList"]) == 2 and first["nextToken"]
    second = get(sim_server, FOLLOWERS, tok, maxResults=2, nextToken=first["nextToken"]).json()["result"]
    assert "nextToken" not in second
    listed = first["userList"] + second["userList"]
    assert {u["userId"] for u in listed} == {MANAGER, EXTERNAL, STRANGER}  # GONE has unfollowed
    for user in listed:
        assert user["name"] == BY_USERID[user["userId"]]["name"] and isinstance(user["timestamp"], int)
    whole = get(sim_server, FOLLOWERS, tok).json()["result"]
    assert len(whole["userList"]) == 3 and "nextToken" not in whole


def test_followers_list_orders_by_follow_time(sim_server: SimulatorServer) -> None:
    sim_server.sim.advance(10)
    sim_server.sim.followers.follow(DEMO_WINDOW_CORPID, GONE)
    users = get(sim_server, FOLLOWERS, window_token(sim_server)).json()["result"]["userList"]
    assert users[-1]["userId"] == GONE and users[-1]["timestamp"] > users[0]["timestamp"]


@pytest.mark.parametrize("params", [{"maxResults": 101}, {"maxResults": 0}, {"maxResults": "x"}, {"nextToken": "x"}])
def test_followers_list_refuses_bad_paging(sim_server: SimulatorServer, params: dict[str, Any]) -> None:
    assert_v1_error(get(sim_server, FOLLOWERS, window_token(sim_server), **params), 400, "InvalidParameter")


def test_getbyunionid_answers_real_members_by_their_own_unionid(sim_server: SimulatorServer) -> None:
    tok = internal_token(sim_server)
    for person in DEMO_PEOPLE:
        body = by_unionid(sim_server, tok, person["unionid"])
        if person["userid"] is None:
            assert body["errcode"] == 60121
        else:
            assert body["errcode"] == 0 and body["request_id"]
            assert body["result"] == {"contact_type": person["contact_type"], "userid": person["userid"]}


def test_getbyunionid_maps_linked_followers_by_default_by_either_id(sim_server: SimulatorServer) -> None:
    tok = internal_token(sim_server)
    manager, external, stranger = BY_USERID[MANAGER], BY_USERID[EXTERNAL], BY_USERID[STRANGER]
    for key in ("unionid", "associated_unionid"):
        assert by_unionid(sim_server, tok, manager[key])["result"] == {"contact_type": 0, "userid": "manager0001"}
        assert by_unionid(sim_server, tok, external[key])["result"] == {"contact_type": 1, "userid": "ext0001"}
        assert by_unionid(sim_server, tok, stranger[key])["errcode"] == 60121


@pytest.mark.parametrize("recognised", [["unionid"], ["associated_unionid"], []])
def test_real_org_recognises_only_the_chosen_ids(sim_server: SimulatorServer, recognised: list[str]) -> None:
    assert sim_post(sim_server, "/_sim/app/recognised", {"corpid": DEMO_ORG_CORPID, "ids": recognised})["errcode"] == 0
    tok = internal_token(sim_server)
    for key in ("unionid", "associated_unionid"):
        body = by_unionid(sim_server, tok, BY_USERID[MANAGER][key])
        assert body["errcode"] == (0 if key in recognised else 60121)


def test_link_control_maps_a_follower(sim_server: SimulatorServer) -> None:
    tok = internal_token(sim_server)
    body = {"corpid": DEMO_WINDOW_CORPID, "userid": STRANGER, "real_userid": "manager0001"}
    assert sim_post(sim_server, "/_sim/app/link", body)["errcode"] == 0
    assert by_unionid(sim_server, tok, BY_USERID[STRANGER]["unionid"])["result"]["userid"] == "manager0001"


def test_getbyunionid_errors(sim_server: SimulatorServer) -> None:
    body = by_unionid(sim_server, "made-up", "uEmpl0yee8fQ2xKzN4")
    assert body["errcode"] == 88 and body["sub_code"] == "40014"
    url = f"{sim_server.base_url}/{GET_BY_UNIONID}?access_token={internal_token(sim_server)}"
    assert requests.post(url, json={}, timeout=5).json()["errcode"] == 40035
    assert requests.post(url, data="unionid=x", timeout=5).json()["errcode"] == 43004


def test_follower_apis_pass_the_controls(sim_server: SimulatorServer) -> None:
    tok = window_token(sim_server)
    assert sim_post(sim_server, "/_sim/app/qps", {"api": STATUSES, "limit": 1})["errcode"] == 0
    assert status(sim_server, tok, MANAGER).status_code == 200
    assert_v1_error(status(sim_server, tok, MANAGER), 403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi")
    injected = {"api": FOLLOWERS, "status": 429, "code": "systemBusy"}
    assert sim_post(sim_server, "/_sim/app/inject", injected)["errcode"] == 0
    assert_v1_error(get(sim_server, FOLLOWERS, tok), 429, "systemBusy")
    assert sim_post(sim_server, "/_sim/app/qps", {"api": GET_BY_UNIONID, "limit": 1})["errcode"] == 0
    itok = internal_token(sim_server)
    assert by_unionid(sim_server, itok, "uEmpl0yee8fQ2xKzN4")["errcode"] == 0
    assert by_unionid(sim_server, itok, "uEmpl0yee8fQ2xKzN4")["errcode"] == 90018
    counted = requests.get(f"{sim_server.base_url}/_sim/app/calls", params={"api": STATUSES}, timeout=5).json()
    assert counted == {"calls": 2}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_sim/app/follow", {"corpid": DEMO_WINDOW_CORPID, "userid": MANAGER, "followed": 1}),
        ("/_sim/app/follow", {"corpid": DEMO_ORG_CORPID, "userid": "manager0001"}),  # a real org has no followers
        ("/_sim/app/follow", {"corpid": DEMO_WINDOW_CORPID, "userid": "nobody"}),
        ("/_sim/app/link", {"corpid": DEMO_WINDOW_CORPID, "userid": MANAGER, "real_userid": "nobody"}),
        ("/_sim/app/recognised", {"corpid": DEMO_ORG_CORPID, "ids": ["openid"]}),
        ("/_sim/app/recognised", {"corpid": DEMO_WINDOW_CORPID, "ids": ["unionid"]}),
        ("/_sim/app/recognised", {"corpid": DEMO_ORG_CORPID, "ids": [1]}),
    ],
)
def test_follower_controls_refuse_bad_input(sim_server: SimulatorServer, path: str, body: dict[str, Any]) -> None:
    assert sim_post(sim_server, path, body)["errcode"] == 40035


def test_demo_members_sign_in_with_their_apps(sim_server: SimulatorServer) -> None:
    url = f"{sim_server.base_url}/topapi/v2/user/getuserinfo?access_token="
    code = sim_server.sim.mint_app_code(DEMO_WINDOW_CORPID, DEMO_WINDOW_APP_KEY, MANAGER)
    result = requests.post(url + window_token(sim_server), json={"code": code}, timeout=5).json()["result"]
    assert (result["userid"], result["associated_unionid"]) == (MANAGER, BY_USERID[MANAGER]["associated_unionid"])
    code = sim_server.sim.mint_app_code(DEMO_ORG_CORPID, DEMO_APP_KEY, "ext0001")
    result = requests.post(url + internal_token(sim_server), json={"code": code}, timeout=5).json()["result"]
    assert result["userid"] == "ext0001"


def test_member_contact_type_is_employee_or_external() -> None:
    sim = Simulator(rate_limit=None)
    sim.apps.add_org("real-org")
    with pytest.raises(ValueError):
        sim.apps.add_member("real-org", userid="u", unionid="x", name="n", contact_type=2)
