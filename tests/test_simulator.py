"""Tests for the built-in DingTalk simulator (sandbox/), all through its HTTP face."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox import (
    APIS,
    DEMO_AGENT_ID,
    DEMO_CHANNEL_SECRET,
    DEMO_CORP_SECRET,
    DEMO_CORPID,
    DEMO_PEOPLE,
    Simulator,
    SimulatorError,
    SimulatorServer,
    accepted_urls,
    create_simulator_app,
    form_decode,
    sign,
)

T0 = 1_700_000_000.0
EMPLOYEE, EXTERNAL, UNLINKED = DEMO_PEOPLE
NONCE = "Wm3WZYTPz0wzccnW"
STAMP = "1414587457"
PAGE = "https://h5.example.com/login?next=%2Fhome&a=1"


# ---- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def sim() -> Simulator:
    # A frozen clock: only sim.advance moves time, so expiry and throttling are deterministic.
    return Simulator.demo(clock=lambda: T0)


@pytest.fixture
def client(sim: Simulator) -> FlaskClient:
    return create_simulator_app(sim).test_client()


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    with SimulatorServer(Simulator.demo(clock=lambda: T0, rate_limit=None)) as running:
        yield running


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def call(client: FlaskClient, api: str, **params: str) -> dict[str, Any]:
    """GET an upstream API and return its JSON body, checking DingTalk's HTTP conventions."""
    response = client.get(f"/{api}", query_string=params)
    assert response.status_code == 200
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def post(client: FlaskClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to a client-side or control endpoint and return its JSON body."""
    response = client.post(path, json=body)
    assert response.status_code == 200
    data = response.get_json()
    assert isinstance(data, dict)
    return data


def corp_token(client: FlaskClient) -> str:
    body = call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)
    assert body["errcode"] == 0, body
    return str(body["access_token"])


def channel_token(client: FlaskClient) -> str:
    body = call(client, "channel/get_channel_token", corpid=DEMO_CORPID, channel_secret=DEMO_CHANNEL_SECRET)
    assert body["errcode"] == 0, body
    return str(body["access_token"])


def channel_ticket(client: FlaskClient, token: str | None = None) -> str:
    body = call(client, "channel/get_channel_jsapi_ticket", access_token=token or channel_token(client))
    assert body["errcode"] == 0, body
    return str(body["ticket"])


def check(client: FlaskClient, **overrides: Any) -> dict[str, Any]:
    """Run the client's dd.config check; by default with a correct SHA-1 signature over PAGE."""
    fields: dict[str, Any] = {
        "corpId": DEMO_CORPID,
        "agentId": DEMO_AGENT_ID,
        "timeStamp": STAMP,
        "nonceStr": NONCE,
        "type": 1,
        "url": PAGE,
    }
    ticket = overrides.pop("ticket", None)
    signed_url = overrides.pop("signed_url", PAGE)
    fields.update(overrides)
    if "signature" not in fields:
        fields["signature"] = sign(
            ticket=ticket or "", nonce=fields["nonceStr"], timestamp=fields["timeStamp"], url=signed_url
        )
    return post(client, "/_client/check_config", fields)


def follower_code(client: FlaskClient, unionid: str, corpid: str = DEMO_CORPID) -> str:
    body = post(client, "/_client/auth_code", {"corpid": corpid, "unionid": unionid})
    return str(body["code"])


# ---- demo data ------------------------------------------------------------------------------------


def test_demo_data_has_one_of_each_kind_of_follower() -> None:
    assert DEMO_CORP_SECRET != DEMO_CHANNEL_SECRET
    assert [(p["userid"], p["contact_type"]) for p in DEMO_PEOPLE] == [
        ("manager0001", 0),
        ("ext0001", 1),
        (None, None),
    ]
    assert all(p["label"] and p["unionid"] and p["openid"] and p["name"] for p in DEMO_PEOPLE)
    assert len({p["unionid"] for p in DEMO_PEOPLE}) == len({p["openid"] for p in DEMO_PEOPLE}) == 3


# ---- tokens ---------------------------------------------------------------------------------------


def test_gettoken_returns_the_same_token_and_renews_it(client: FlaskClient, sim: Simulator) -> None:
    first = call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)
    assert first["errcode"] == 0 and first["errmsg"] == "ok" and first["expires_in"] == 7200
    sim.advance(7000)
    assert corp_token(client) == first["access_token"]
    sim.advance(7000)  # 14,000 s after issue, but renewed at 7,000 s
    body = call(client, "user/getUseridByUnionid", access_token=first["access_token"], unionid=EMPLOYEE["unionid"])
    assert body["errcode"] == 0


def test_gettoken_accepts_the_appkey_form(client: FlaskClient) -> None:
    body = call(client, "gettoken", appkey=DEMO_CORPID, appsecret=DEMO_CORP_SECRET)
    assert body["errcode"] == 0
    assert body["access_token"] == corp_token(client)


def test_channel_token_has_no_expires_in_and_renews(client: FlaskClient, sim: Simulator) -> None:
    first = call(client, "channel/get_channel_token", corpid=DEMO_CORPID, channel_secret=DEMO_CHANNEL_SECRET)
    assert first["errcode"] == 0 and "expires_in" not in first
    sim.advance(7000)
    assert channel_token(client) == first["access_token"]
    sim.advance(7000)
    assert call(client, "channel/get_channel_jsapi_ticket", access_token=first["access_token"])["errcode"] == 0


def test_the_lifetime_control_shortens_every_token_and_ticket(client: FlaskClient, sim: Simulator) -> None:
    assert post(client, "/_sim/lifetime", {"seconds": 20}) == {"errcode": 0, "errmsg": "ok"}
    corp = call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)
    channel = call(client, "channel/get_channel_token", corpid=DEMO_CORPID, channel_secret=DEMO_CHANNEL_SECRET)
    # The channel token names its lifetime only when it is not DingTalk's 7200 s, which a client assumes.
    assert corp["expires_in"] == channel["expires_in"] == 20
    ticket = call(client, "channel/get_channel_jsapi_ticket", access_token=channel["access_token"])
    assert ticket["expires_in"] == 20
    sim.advance(19)
    assert call(client, "get_jsapi_ticket", access_token=corp["access_token"])["errcode"] == 0
    assert corp_token(client) == corp["access_token"]  # renewed by 20 s, as DingTalk renews by 7200
    sim.advance(15)
    assert call(client, "channel/get_channel_jsapi_ticket", access_token=channel["access_token"])["errcode"] == 42001
    assert call(client, "get_jsapi_ticket", access_token=corp["access_token"])["errcode"] == 0
    sim.advance(10)
    assert call(client, "get_jsapi_ticket", access_token=corp["access_token"])["errcode"] == 42001
    assert post(client, "/_sim/lifetime", {"seconds": None}) == {"errcode": 0, "errmsg": "ok"}
    fresh = call(client, "channel/get_channel_token", corpid=DEMO_CORPID, channel_secret=DEMO_CHANNEL_SECRET)
    assert "expires_in" not in fresh
    assert call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)["expires_in"] == 7200


@pytest.mark.parametrize("seconds", [0, 0.5, 7201, -1, "20", True])
def test_the_lifetime_control_refuses_odd_lifetimes(client: FlaskClient, seconds: Any) -> None:
    assert post(client, "/_sim/lifetime", {"seconds": seconds})["errcode"] == 40035


@pytest.mark.parametrize("pipeline", ["channel", "corp"])
def test_tokens_expire_after_7200_seconds(client: FlaskClient, sim: Simulator, pipeline: str) -> None:
    token = channel_token(client) if pipeline == "channel" else corp_token(client)
    api = "channel/get_channel_jsapi_ticket" if pipeline == "channel" else "get_jsapi_ticket"
    sim.advance(7199)
    assert call(client, api, access_token=token)["errcode"] == 0
    sim.advance(7200)
    assert call(client, api, access_token=token)["errcode"] == 42001
    fresh = channel_token(client) if pipeline == "channel" else corp_token(client)
    assert fresh != token
    assert call(client, api, access_token=fresh)["errcode"] == 0


@pytest.mark.parametrize(
    ("revoked", "channel_code", "corp_code"),
    [("channel", 40014, 0), ("corp", 0, 40014), ("all", 40014, 40014)],
)
def test_revoked_tokens_answer_40014(
    client: FlaskClient, sim: Simulator, revoked: str, channel_code: int, corp_code: int
) -> None:
    channel, corp = channel_token(client), corp_token(client)
    sim.revoke_tokens(DEMO_CORPID, revoked)
    assert call(client, "channel/get_channel_jsapi_ticket", access_token=channel)["errcode"] == channel_code
    assert call(client, "get_jsapi_ticket", access_token=corp, type="jsapi")["errcode"] == corp_code
    # A fetch after revocation issues a working, different token.
    if channel_code:
        assert channel_token(client) != channel
    if corp_code:
        assert corp_token(client) != corp


@pytest.mark.parametrize(
    ("api", "wrong_pipeline", "extra"),
    [
        ("user/getUseridByUnionid", "channel", {"unionid": EMPLOYEE["unionid"]}),
        ("user/getuserinfo", "channel", {"code": "whatever"}),
        ("get_jsapi_ticket", "channel", {"type": "jsapi"}),
        ("channel/get_channel_jsapi_ticket", "corp", {}),
        ("channel/user/get_by_code", "corp", {"code": "whatever"}),
    ],
)
def test_token_pipelines_are_separate(
    client: FlaskClient, api: str, wrong_pipeline: str, extra: dict[str, str]
) -> None:
    token = channel_token(client) if wrong_pipeline == "channel" else corp_token(client)
    assert call(client, api, access_token=token, **extra)["errcode"] == 40014


@pytest.mark.parametrize("api", [a for a in APIS if a not in ("gettoken", "channel/get_channel_token")])
@pytest.mark.parametrize("token", [None, "", "not-a-token"])
def test_missing_or_unknown_token_answers_40014(client: FlaskClient, api: str, token: str | None) -> None:
    params = {"code": "x", "unionid": "x"} | ({} if token is None else {"access_token": token})
    body = call(client, api, **params)
    assert body["errcode"] == 40014 and body["errmsg"]


@pytest.mark.parametrize(
    ("api", "params", "errcode"),
    [
        ("gettoken", {"corpid": "dingnobody", "corpsecret": DEMO_CORP_SECRET}, 40089),
        ("gettoken", {"corpid": DEMO_CORPID, "corpsecret": "wrong"}, 40001),
        ("gettoken", {"corpid": DEMO_CORPID, "corpsecret": DEMO_CHANNEL_SECRET}, 40001),
        ("gettoken", {"appkey": DEMO_CORPID, "appsecret": "wrong"}, 40001),
        ("gettoken", {"corpid": DEMO_CORPID}, 40035),
        ("gettoken", {}, 40035),
        ("channel/get_channel_token", {"corpid": "dingnobody", "channel_secret": DEMO_CHANNEL_SECRET}, 40089),
        ("channel/get_channel_token", {"corpid": DEMO_CORPID, "channel_secret": "wrong"}, 40089),
        ("channel/get_channel_token", {"corpid": DEMO_CORPID, "channel_secret": DEMO_CORP_SECRET}, 40089),
        ("channel/get_channel_token", {"channel_secret": DEMO_CHANNEL_SECRET}, 40035),
    ],
)
def test_token_endpoints_reject_bad_credentials(
    client: FlaskClient, api: str, params: dict[str, str], errcode: int
) -> None:
    body = call(client, api, **params)
    assert body["errcode"] == errcode and "access_token" not in body


def test_ip_whitelist_blocks_token_endpoints_until_cleared(client: FlaskClient, sim: Simulator) -> None:
    sim.add_corp("dingother", corp_secret="cs", channel_secret="chs", agent_id="7")
    sim.set_ip_blocked(DEMO_CORPID)
    for api, params in [
        ("gettoken", {"corpid": DEMO_CORPID, "corpsecret": DEMO_CORP_SECRET}),
        ("channel/get_channel_token", {"corpid": DEMO_CORPID, "channel_secret": DEMO_CHANNEL_SECRET}),
    ]:
        body = call(client, api, **params)
        assert body == {"errcode": 60020, "errmsg": "访问ip不在白名单之中,request ip=203.0.113.7"}
    assert call(client, "gettoken", corpid="dingother", corpsecret="cs")["errcode"] == 0
    sim.set_ip_blocked(DEMO_CORPID, "198.51.100.9")
    assert "198.51.100.9" in call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)["errmsg"]
    sim.set_ip_blocked(DEMO_CORPID, None)
    assert corp_token(client)


# ---- tickets --------------------------------------------------------------------------------------


def test_invalidate_mode_issues_a_new_ticket_and_retires_the_old(client: FlaskClient) -> None:
    token = channel_token(client)
    old = channel_ticket(client, token)
    assert check(client, ticket=old) == {"ok": True}
    new = channel_ticket(client, token)
    assert new != old
    assert check(client, ticket=old)["errorCode"] == 52013
    assert check(client, ticket=new) == {"ok": True}


def test_renew_mode_returns_the_same_ticket_and_renews_it(client: FlaskClient, sim: Simulator) -> None:
    sim.set_ticket_mode(DEMO_CORPID, "renew")
    token = channel_token(client)
    first = call(client, "channel/get_channel_jsapi_ticket", access_token=token)
    assert first["expires_in"] == 7200
    sim.advance(7000)
    assert channel_ticket(client, channel_token(client)) == first["ticket"]
    sim.advance(7000)  # past the first expiry, inside the renewed one
    assert check(client, ticket=first["ticket"]) == {"ok": True}


def test_expired_ticket_fails_with_52011(client: FlaskClient, sim: Simulator) -> None:
    ticket = channel_ticket(client)
    sim.advance(7200)
    assert check(client, ticket=ticket)["errorCode"] == 52011


def test_corp_ticket_is_independent_and_not_a_channel_ticket(client: FlaskClient) -> None:
    channel = channel_ticket(client)
    body = call(client, "get_jsapi_ticket", access_token=corp_token(client), type="jsapi")
    assert body["errcode"] == 0 and body["expires_in"] == 7200
    corp = body["ticket"]
    assert corp != channel
    # Fetching the corp ticket did not retire the channel ticket.
    assert check(client, ticket=channel) == {"ok": True}
    # Signing a service-window page with the corp ticket is the pipeline mix-up the client names 52019.
    assert check(client, ticket=corp)["errorCode"] == 52019
    assert call(client, "get_jsapi_ticket", access_token=corp_token(client), type="wx")["errcode"] == 40035


# ---- follower and employee codes ------------------------------------------------------------------


@pytest.mark.parametrize("person", DEMO_PEOPLE, ids=lambda p: str(p["userid"]))
def test_follower_login_for_each_kind_of_follower(client: FlaskClient, person: dict[str, Any]) -> None:
    code = follower_code(client, person["unionid"])
    body = call(client, "channel/user/get_by_code", access_token=channel_token(client), code=code)
    assert body == {"errcode": 0, "errmsg": "ok", "openid": person["openid"], "unionid": person["unionid"]}
    found = call(client, "user/getUseridByUnionid", access_token=corp_token(client), unionid=body["unionid"])
    if person["userid"] is None:
        assert found["errcode"] == 60121
    else:
        assert found == {
            "errcode": 0,
            "errmsg": "ok",
            "contactType": person["contact_type"],
            "userid": person["userid"],
        }


def test_follower_codes_are_single_use(client: FlaskClient) -> None:
    token = channel_token(client)
    code = follower_code(client, EMPLOYEE["unionid"])
    assert call(client, "channel/user/get_by_code", access_token=token, code=code)["errcode"] == 0
    assert call(client, "channel/user/get_by_code", access_token=token, code=code)["errcode"] == 40078
    assert call(client, "channel/user/get_by_code", access_token=token, code="made-up")["errcode"] == 40078


@pytest.mark.parametrize(("age", "errcode"), [(299, 0), (300, 40078)])
def test_follower_codes_expire_after_300_seconds(client: FlaskClient, sim: Simulator, age: int, errcode: int) -> None:
    code = follower_code(client, EMPLOYEE["unionid"])
    sim.advance(age)
    assert call(client, "channel/user/get_by_code", access_token=channel_token(client), code=code)["errcode"] == errcode


def test_follower_code_of_another_corp_is_unknown(client: FlaskClient, sim: Simulator) -> None:
    sim.add_corp("dingother", corp_secret="cs", channel_secret="chs", agent_id="7")
    sim.add_person("dingother", unionid="u2", openid="o2", name="n")
    code = follower_code(client, "u2", corpid="dingother")
    assert call(client, "channel/user/get_by_code", access_token=channel_token(client), code=code)["errcode"] == 40078


def test_employee_code_login(client: FlaskClient, sim: Simulator) -> None:
    token = corp_token(client)
    code = post(client, "/_client/employee_code", {"corpid": DEMO_CORPID, "userid": "manager0001"})["code"]
    body = call(client, "user/getuserinfo", access_token=token, code=code)
    assert body["errcode"] == 0 and body["userid"] == "manager0001"
    assert call(client, "user/getuserinfo", access_token=token, code=code)["errcode"] == 40029
    assert call(client, "user/getuserinfo", access_token=token, code="made-up")["errcode"] == 40029
    late = sim.mint_employee_code(DEMO_CORPID, "manager0001")
    sim.advance(300)
    assert call(client, "user/getuserinfo", access_token=corp_token(client), code=late)["errcode"] == 40029


@pytest.mark.parametrize(
    ("path", "body", "errcode"),
    [
        ("/_client/auth_code", {"corpid": "dingnobody", "unionid": EMPLOYEE["unionid"]}, 40089),
        ("/_client/auth_code", {"corpid": DEMO_CORPID, "unionid": "nobody"}, 60121),
        ("/_client/auth_code", {"corpid": DEMO_CORPID}, 40035),
        ("/_client/employee_code", {"corpid": DEMO_CORPID, "userid": "ext0001"}, 60121),
        ("/_client/employee_code", {"corpid": DEMO_CORPID, "userid": 5}, 40035),
    ],
)
def test_client_code_endpoints_reject_unknown_people(
    client: FlaskClient, path: str, body: dict[str, Any], errcode: int
) -> None:
    assert post(client, path, body)["errcode"] == errcode


# ---- throttling, faults, latency, counting --------------------------------------------------------


def test_more_than_20_calls_per_second_are_throttled(client: FlaskClient, sim: Simulator) -> None:
    token = corp_token(client)  # one gettoken call in this second
    codes = [call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)["errcode"] for _ in range(20)]
    assert codes == [0] * 19 + [90018]
    # Another API of the same corp has its own budget.
    assert call(client, "get_jsapi_ticket", access_token=token, type="jsapi")["errcode"] == 0
    sim.advance(0.5)
    assert call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)["errcode"] == 90018
    sim.advance(1.0)  # the window has slid past all of those calls
    assert call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)["errcode"] == 0


def test_throttling_can_be_disabled() -> None:
    client = create_simulator_app(Simulator.demo(clock=lambda: T0, rate_limit=None)).test_client()
    for _ in range(50):
        assert call(client, "gettoken", corpid=DEMO_CORPID, corpsecret=DEMO_CORP_SECRET)["errcode"] == 0


@pytest.mark.parametrize(
    ("inject", "expected"),
    [
        ({"errcode": -1}, {"errcode": -1, "errmsg": "injected"}),
        (
            {"errcode": 88, "errmsg": "auth", "sub_code": 40014},
            {"errcode": 88, "errmsg": "auth", "sub_code": 40014},
        ),
        ({"errcode": 90018, "times": 2}, {"errcode": 90018, "errmsg": "injected"}),
        ({"errcode": 0, "body": {"status": 1111, "wait": 5}}, {"status": 1111, "wait": 5}),
    ],
)
def test_injected_json_faults(
    client: FlaskClient, sim: Simulator, inject: dict[str, Any], expected: dict[str, Any]
) -> None:
    token = corp_token(client)
    sim.inject("user/getUseridByUnionid", **inject)
    for _ in range(inject.get("times", 1)):
        body = call(client, "user/getUseridByUnionid", access_token=token, unionid=EMPLOYEE["unionid"])
        assert body == expected
    assert call(client, "user/getUseridByUnionid", access_token=token, unionid=EMPLOYEE["unionid"])["errcode"] == 0
    assert sim.calls("user/getUseridByUnionid", DEMO_CORPID) == inject.get("times", 1) + 1


def test_injected_raw_body_is_not_json(client: FlaskClient, sim: Simulator) -> None:
    sim.inject("gettoken", 0, raw="<html><body>访问被拒绝</body></html>")
    response = client.get("/gettoken", query_string={"corpid": DEMO_CORPID, "corpsecret": DEMO_CORP_SECRET})
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert response.get_data(as_text=True).startswith("<html>")
    assert corp_token(client)


def test_injected_fault_can_target_one_corp(client: FlaskClient, sim: Simulator) -> None:
    sim.add_corp("dingother", corp_secret="cs", channel_secret="chs", agent_id="7")
    sim.inject("gettoken", -1, corpid="dingother")
    assert corp_token(client)
    assert call(client, "gettoken", corpid="dingother", corpsecret="cs")["errcode"] == -1


@pytest.mark.parametrize(
    "kwargs",
    [{"api": "nope", "errcode": -1}, {"api": "gettoken", "errcode": -1, "times": 0}],
)
def test_inject_rejects_bad_arguments(sim: Simulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(SimulatorError):
        sim.inject(**kwargs)


def test_calls_are_counted_per_api_and_corp(client: FlaskClient, sim: Simulator) -> None:
    token = corp_token(client)
    call(client, "gettoken", corpid=DEMO_CORPID, corpsecret="wrong")
    call(client, "gettoken", corpid="dingnobody", corpsecret="x")
    call(client, "user/getUseridByUnionid", access_token=token, unionid=UNLINKED["unionid"])
    call(client, "user/getUseridByUnionid", access_token="unknown", unionid="x")
    assert sim.calls("gettoken", DEMO_CORPID) == 2
    assert sim.calls("gettoken") == 3
    assert sim.calls("user/getUseridByUnionid", DEMO_CORPID) == 1
    assert sim.calls(corpid=DEMO_CORPID) == 3
    assert sim.calls() == 5
    post(client, "/_client/auth_code", {"corpid": DEMO_CORPID, "unionid": EMPLOYEE["unionid"]})
    assert sim.calls() == 5  # the client side is not an upstream call
    sim.reset_calls()
    assert sim.calls() == 0


def test_latency_is_per_api_and_outside_the_lock(server: SimulatorServer) -> None:
    delay = 0.4
    server.sim.set_latency(delay, "gettoken")
    creds = {"corpid": DEMO_CORPID, "corpsecret": DEMO_CORP_SECRET}
    spans: list[tuple[float, float]] = []

    def timed(api: str, params: dict[str, str]) -> float:
        started = time.monotonic()
        with requests.Session() as session:
            assert isinstance(session.get(f"{server.base_url}/{api}", params=params, timeout=5).json(), dict)
        spans.append((started, time.monotonic()))
        return time.monotonic() - started

    def fetch() -> None:
        timed("gettoken", creds)

    threads = [threading.Thread(target=fetch) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(spans) == 5 and min(end - start for start, end in spans) >= delay
    # Outside the lock, the five delays run side by side. Serialised, each answer would come a full delay after the
    # one before it; so some two answers must come closer together than that (robust to a slow start of a thread).
    ends = sorted(end for _, end in spans)
    assert min(b - a for a, b in zip(ends, ends[1:], strict=False)) < delay / 2, spans
    assert timed("channel/get_channel_token", {"corpid": DEMO_CORPID}) < delay
    server.sim.set_latency(delay)  # the default for every API without its own setting
    server.sim.set_latency(0, "gettoken")
    assert timed("channel/get_channel_token", {"corpid": DEMO_CORPID}) >= delay
    assert timed("gettoken", creds) < delay


# ---- dd.config check ------------------------------------------------------------------------------


def test_hash_matches_the_published_sha1_vectors() -> None:
    ticket = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
    for url, digest in [
        ("http://mp.weixin.qq.com?params=value", "0f9de62fce790f9a083d5c99e95740ceb90c27ed"),
        ("http://mp.weixin.qq.com", "f4d90daf4b3bca3078ab155816175ba34c443a7b"),
    ]:
        assert sign(ticket=ticket, nonce=NONCE, timestamp=STAMP, url=url) == digest


@pytest.mark.parametrize(
    ("overrides", "errcode"),
    [
        ({"corpId": "dingnobody"}, 52010),
        ({"corpId": ""}, 52010),
        ({"signed_url": "https://h5.example.com/other"}, 52013),
        ({"signed_url": PAGE + "#/route"}, 52013),
        ({"signature": "0" * 40}, 52013),
        ({"signature": ""}, 52013),
        ({"url": ""}, 52014),
        ({"nonceStr": ""}, 52015),
        ({"timeStamp": "abc"}, 52018),
        ({"timeStamp": ""}, 52018),
        ({"type": 0}, 52019),
        ({"type": True}, 52019),
        ({"agentId": "999"}, 52019),
    ],
)
def test_check_config_errors(client: FlaskClient, overrides: dict[str, Any], errcode: int) -> None:
    ticket = channel_ticket(client)
    body = check(client, ticket=ticket, **overrides)
    assert body["ok"] is False and body["errorCode"] == errcode and body["errorMessage"]


def test_check_config_without_any_ticket_is_52011(client: FlaskClient) -> None:
    assert check(client, ticket="never-issued")["errorCode"] == 52011


def test_check_config_rejects_a_sha256_signature_on_a_sha1_corp(client: FlaskClient) -> None:
    ticket = channel_ticket(client)
    wrong = sign(ticket=ticket, nonce=NONCE, timestamp=STAMP, url=PAGE, hash_name="sha256")
    assert check(client, signature=wrong)["errorCode"] == 52013


def test_sha256_corp_accepts_only_sha256(client: FlaskClient, sim: Simulator) -> None:
    sim.add_corp("ding256", corp_secret="cs", channel_secret="chs", agent_id="9", sign_hash="sha256")
    token = call(client, "channel/get_channel_token", corpid="ding256", channel_secret="chs")["access_token"]
    ticket = channel_ticket(client, token)
    fields = {"corpId": "ding256", "agentId": 9}  # agentId as the number JS passes
    good = sign(ticket=ticket, nonce=NONCE, timestamp=STAMP, url=PAGE, hash_name="sha256")
    assert check(client, signature=good, **fields) == {"ok": True}
    assert check(client, ticket=ticket, **fields)["errorCode"] == 52013


def test_ticket_of_another_corp_is_52011(client: FlaskClient, sim: Simulator) -> None:
    channel_ticket(client)
    sim.add_corp("dingother", corp_secret="cs", channel_secret="chs", agent_id="7")
    token = call(client, "channel/get_channel_token", corpid="dingother", channel_secret="chs")["access_token"]
    assert check(client, ticket=channel_ticket(client, token))["errorCode"] == 52011


@pytest.mark.parametrize(
    ("href", "normalised"),
    [
        (
            "https://abc.com?url=http%3A%2F%2Fabc.com%2Fsomewhere&a=1",
            "https://abc.com?url=http://abc.com/somewhere&a=1",
        ),
        (
            "http://example.com/path%20x/page?q=a+b&c=%E4%B8%AD#frag",
            "http://example.com/path%20x/page?q=a b&c=中",
        ),
        ("HTTP://Example.COM:80/a?x=1", "http://Example.COM:80/a?x=1"),
        ("https://user:pw@example.com:8443/p?x=1#/route?y=2", "https://user:pw@example.com:8443/p?x=1"),
    ],
)
def test_both_the_raw_and_the_query_decoded_url_are_accepted(client: FlaskClient, href: str, normalised: str) -> None:
    ticket = channel_ticket(client)
    raw = href.split("#", 1)[0]
    for signed_url in (raw, normalised):
        assert check(client, ticket=ticket, url=href, signed_url=signed_url) == {"ok": True}
    assert check(client, ticket=ticket, url=href, signed_url=href + "x")["errorCode"] == 52013
    # The path is never decoded: only the query is.
    if "%20" in href:
        decoded_path = normalised.replace("path%20x", "path x")
        assert check(client, ticket=ticket, url=href, signed_url=decoded_path)["errorCode"] == 52013


def test_accepted_urls_drop_the_fragment() -> None:
    assert accepted_urls("https://a.com/p#x?y=1") == ["https://a.com/p"]


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="%+aF9zG&=?/中\u00e9 ", max_size=24))
def test_form_decode_agrees_with_the_standard_library(text: str) -> None:
    assert form_decode(text) == urllib.parse.unquote_plus(text)


# ---- HTTP conventions, control endpoints, robustness ----------------------------------------------


def test_post_endpoints_require_json(client: FlaskClient) -> None:
    response = client.post("/_client/auth_code", data="corpid=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200 and response.get_json()["errcode"] == 43004
    response = client.post("/_sim/advance", data="{not json", content_type="application/json")
    assert response.get_json()["errcode"] == 40035
    assert post(client, "/_sim/advance", {"seconds": "10"})["errcode"] == 40035
    assert post(client, "/_sim/advance", {"seconds": -1})["errcode"] == 40035


def test_unknown_paths_and_methods_answer_dingtalk_shaped_json(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.get_json()["errcode"] == 40035
    response = client.post("/gettoken", json={})
    assert response.status_code == 405 and response.get_json()["errcode"] == 40035


def test_control_and_client_endpoints_over_http(server: SimulatorServer, http: requests.Session) -> None:
    base = server.base_url

    def ctl(path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = http.post(f"{base}{path}", json=body, timeout=5).json()
        assert isinstance(data, dict)
        return data

    def get(api: str, **params: str) -> dict[str, Any]:
        data = http.get(f"{base}/{api}", params=params, timeout=5).json()
        assert isinstance(data, dict)
        return data

    ok = {"errcode": 0, "errmsg": "ok"}
    creds = {"corpid": DEMO_CORPID, "corpsecret": DEMO_CORP_SECRET}
    token = get("gettoken", **creds)["access_token"]

    assert ctl("/_sim/inject", {"api": "gettoken", "errcode": -1, "times": 1}) == ok
    assert get("gettoken", **creds)["errcode"] == -1
    assert ctl("/_sim/inject", {"api": "gettoken", "raw": "<html>blocked</html>"}) == ok
    assert http.get(f"{base}/gettoken", params=creds, timeout=5).text == "<html>blocked</html>"
    assert ctl("/_sim/inject", {"api": "bogus", "errcode": -1})["errcode"] == 40035

    assert http.get(f"{base}/_sim/calls", params={"api": "gettoken", "corpid": DEMO_CORPID}, timeout=5).json() == {
        "calls": 3
    }
    assert ctl("/_sim/reset_calls", {}) == ok
    assert http.get(f"{base}/_sim/calls", timeout=5).json() == {"calls": 0}

    assert ctl("/_sim/revoke", {"corpid": DEMO_CORPID, "pipeline": "corp"}) == ok
    assert get("get_jsapi_ticket", access_token=token, type="jsapi")["errcode"] == 40014
    assert ctl("/_sim/revoke", {"corpid": DEMO_CORPID, "pipeline": "both"})["errcode"] == 40035

    assert ctl("/_sim/ip_blocked", {"corpid": DEMO_CORPID}) == ok
    assert get("gettoken", **creds)["errcode"] == 60020
    assert ctl("/_sim/ip_blocked", {"corpid": DEMO_CORPID, "ip": None}) == ok
    token = get("gettoken", **creds)["access_token"]

    assert ctl("/_sim/advance", {"seconds": 7200}) == ok
    assert get("get_jsapi_ticket", access_token=token, type="jsapi")["errcode"] == 42001

    assert ctl("/_sim/ticket_mode", {"corpid": DEMO_CORPID, "mode": "renew"}) == ok
    assert ctl("/_sim/ticket_mode", {"corpid": DEMO_CORPID, "mode": "sometimes"})["errcode"] == 40035
    channel = get("channel/get_channel_token", corpid=DEMO_CORPID, channel_secret=DEMO_CHANNEL_SECRET)["access_token"]
    ticket = get("channel/get_channel_jsapi_ticket", access_token=channel)["ticket"]
    assert get("channel/get_channel_jsapi_ticket", access_token=channel)["ticket"] == ticket

    assert ctl("/_sim/latency", {"seconds": 0.2, "api": "gettoken"}) == ok
    started = time.monotonic()
    get("gettoken", **creds)
    assert time.monotonic() - started >= 0.2
    assert ctl("/_sim/latency", {"seconds": 0, "api": "gettoken"}) == ok

    code = ctl("/_client/auth_code", {"corpid": DEMO_CORPID, "unionid": EXTERNAL["unionid"]})["code"]
    assert get("channel/user/get_by_code", access_token=channel, code=code)["unionid"] == EXTERNAL["unionid"]
    code = ctl("/_client/employee_code", {"corpid": DEMO_CORPID, "userid": "manager0001"})["code"]
    token = get("gettoken", **creds)["access_token"]
    assert get("user/getuserinfo", access_token=token, code=code)["userid"] == "manager0001"

    href = "https://h5.example.com/p?x=%E4%B8%AD#/a"
    signature = sign(ticket=ticket, nonce=NONCE, timestamp=STAMP, url="https://h5.example.com/p?x=中")
    config = {
        "corpId": DEMO_CORPID,
        "agentId": int(DEMO_AGENT_ID),
        "timeStamp": int(STAMP),  # JS may pass numbers; the client stringifies them
        "nonceStr": NONCE,
        "signature": signature,
        "type": 1,
        "url": href,
    }
    assert ctl("/_client/check_config", config) == {"ok": True}
    assert ctl("/_client/check_config", config | {"type": "0"})["errorCode"] == 52019


def test_concurrent_token_fetches_share_one_token_and_are_all_counted(server: SimulatorServer) -> None:
    tokens: list[str] = []
    lock = threading.Lock()

    def fetch() -> None:
        with requests.Session() as session:
            for _ in range(10):
                body = session.get(
                    f"{server.base_url}/gettoken",
                    params={"corpid": DEMO_CORPID, "corpsecret": DEMO_CORP_SECRET},
                    timeout=5,
                ).json()
                with lock:
                    tokens.append(body["access_token"])

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 80 and len(set(tokens)) == 1
    assert server.sim.calls("gettoken", DEMO_CORPID) == 80


def test_server_start_and_stop() -> None:
    server = SimulatorServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    with server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.base_url)
        with requests.Session() as session:
            assert session.get(f"{server.base_url}/_sim/calls", timeout=5).json() == {"calls": 0}
    server.stop()  # idempotent


def test_module_runs_a_standalone_demo_simulator() -> None:
    command = [sys.executable, "-m", "sandbox", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            match = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline())
            assert match, "the first line names the URL"
            with requests.Session() as session:
                body = session.get(
                    f"{match.group(0)}/gettoken",
                    params={"corpid": DEMO_CORPID, "corpsecret": DEMO_CORP_SECRET},
                    timeout=5,
                ).json()
            assert body["errcode"] == 0
        finally:
            proc.terminate()
            proc.wait(timeout=5)


_PARAM_NAMES = [
    "corpid",
    "corpsecret",
    "appkey",
    "appsecret",
    "channel_secret",
    "access_token",
    "code",
    "unionid",
    "type",
]


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    api=st.sampled_from(APIS),
    params=st.dictionaries(st.sampled_from(_PARAM_NAMES), st.text(max_size=12), max_size=5),
)
def test_upstream_never_fails_with_a_server_error(api: str, params: dict[str, str]) -> None:
    client = create_simulator_app(Simulator.demo(clock=lambda: T0)).test_client()
    body = call(client, api, **params)
    assert isinstance(body["errcode"], int) and isinstance(body["errmsg"], str)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=100, deadline=None, database=None)
@given(
    path=st.sampled_from(
        [
            "/_client/auth_code",
            "/_client/employee_code",
            "/_client/check_config",
            "/_sim/inject",
            "/_sim/latency",
            "/_sim/revoke",
            "/_sim/ticket_mode",
            "/_sim/advance",
            "/_sim/reset_calls",
            "/_sim/ip_blocked",
        ]
    ),
    body=st.dictionaries(
        st.sampled_from(
            [
                "corpid",
                "unionid",
                "userid",
                "corpId",
                "agentId",
                "timeStamp",
                "nonceStr",
                "signature",
                "type",
                "url",
                "api",
                "errcode",
                "times",
                "raw",
                "body",
                "seconds",
                "pipeline",
                "mode",
                "ip",
                "sub_code",
            ]
        ),
        _JSON,
        max_size=6,
    ),
)
def test_control_and_client_endpoints_never_fail_with_a_server_error(path: str, body: dict[str, Any]) -> None:
    sim = Simulator.demo(clock=lambda: T0)
    response = create_simulator_app(sim).test_client().post(path, json=body)
    assert response.status_code == 200
    assert isinstance(response.get_json(), dict)
