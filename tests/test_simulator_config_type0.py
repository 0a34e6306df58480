"""The simulator judges an app's `type: 0` dd.config (dingtalk-oapi.md §7.2) as DingTalk would: the app named by
(corpId, agentId), its type, its one hash, and its own live JSAPI ticket; the classic mistakes named as the legacy
checker names them. Signed by the gateway's own code (oapi.signing) with a ticket fetched through the v1.0 API."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from corp.registry import INTERNAL as KIND_INTERNAL
from corp.registry import SERVICE_WINDOW, Corp
from oapi.signing import normalize_url, sign_config
from sandbox import (
    DEMO_AGENT_ID,
    DEMO_CHANNEL_SECRET,
    DEMO_CORPID,
    SimulatorError,
    SimulatorServer,
    create_simulator_app,
)
from sandbox.demo import (
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_ORG_CORPID,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from sandbox.state import Simulator
from tests.helpers import ORIGIN
from web.runtime import get_runtime

T0 = 1_700_000_000.0
PAGE = "https://h5.example.com/login?next=%2Fhome&a=1#/route"
INTERNAL = {"corpid": DEMO_ORG_CORPID, "agent_id": DEMO_APP_AGENT_ID, "key": DEMO_APP_KEY, "secret": DEMO_APP_SECRET}
WINDOW = {
    "corpid": DEMO_WINDOW_CORPID,
    "agent_id": DEMO_WINDOW_AGENT_ID,
    "key": DEMO_WINDOW_APP_KEY,
    "secret": DEMO_WINDOW_APP_SECRET,
}


@pytest.fixture
def sim() -> Simulator:
    return Simulator.demo(clock=lambda: T0, rate_limit=None)


@pytest.fixture
def client(sim: Simulator) -> FlaskClient:
    return create_simulator_app(sim).test_client()


def app_ticket(client: FlaskClient, app: dict[str, str]) -> str:
    """The app's JSAPI ticket, fetched as the gateway fetches it: app token, then /v1.0/oauth2/jsapiTickets."""
    token = client.post("/v1.0/oauth2/accessToken", json={"appKey": app["key"], "appSecret": app["secret"]})
    assert token.status_code == 200, token.get_data(as_text=True)
    ticket = client.post(
        "/v1.0/oauth2/jsapiTickets", json={}, headers={"x-acs-dingtalk-access-token": token.get_json()["accessToken"]}
    )
    assert ticket.status_code == 200, ticket.get_data(as_text=True)
    return str(ticket.get_json()["jsapiTicket"])


def config_for(app: dict[str, str], ticket: str, *, algorithm: str = "sha256", config_type: int = 0) -> dict[str, Any]:
    """The dd.config a gateway page of `app` would carry, signed for PAGE, with the page's own href as url."""
    signed = sign_config(
        corpid=app["corpid"],
        agent_id=app["agent_id"],
        ticket=ticket,
        url=normalize_url(PAGE),
        algorithm=algorithm,
        config_type=config_type,
    )
    return {**signed, "url": PAGE}


def judge(client: FlaskClient, config: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/_client/check_config", json=config)
    assert resp.status_code == 200
    body = resp.get_json()
    assert isinstance(body, dict)
    return body


def set_dd_config(client: FlaskClient, app: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = client.post("/_sim/app/dd_config", json={"app_key": app["key"], **fields}).get_json()
    assert isinstance(body, dict)
    return body


def error_of(verdict: dict[str, Any]) -> int:
    assert verdict["ok"] is False and verdict["errorMessage"], verdict
    return int(verdict["errorCode"])


@pytest.mark.parametrize("app", [INTERNAL, WINDOW], ids=["internal", "service-window"])
def test_an_apps_type_0_config_signed_with_its_ticket_passes(client: FlaskClient, app: dict[str, str]) -> None:
    config = config_for(app, app_ticket(client, app))
    assert judge(client, config) == {"ok": True}
    # The agentId as the number a page's JavaScript may pass.
    assert judge(client, {**config, "agentId": int(app["agent_id"])}) == {"ok": True}


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
def test_dingtalk_verifies_with_the_apps_one_hash(client: FlaskClient, hash_name: str) -> None:
    if hash_name != "sha256":  # sha256 is the default (§7.2); anything else is set per app
        assert set_dd_config(client, INTERNAL, sign_hash=hash_name)["errcode"] == 0
    other = "sha1" if hash_name == "sha256" else "sha256"
    ticket = app_ticket(client, INTERNAL)
    assert judge(client, config_for(INTERNAL, ticket, algorithm=hash_name)) == {"ok": True}
    assert error_of(judge(client, config_for(INTERNAL, ticket, algorithm=other))) == 52013


def test_type_1_for_an_app_is_the_type_error(client: FlaskClient) -> None:
    verdict = judge(client, config_for(WINDOW, app_ticket(client, WINDOW), config_type=1))
    assert error_of(verdict) == 52019 and "type" in verdict["errorMessage"]


def test_the_required_type_is_a_setting_per_app(client: FlaskClient) -> None:
    """§7.2 does not say which type a virtual-org app uses: the gateway has a setting, so the judge has one too."""
    assert set_dd_config(client, WINDOW, config_type=1)["errcode"] == 0
    ticket = app_ticket(client, WINDOW)
    assert judge(client, config_for(WINDOW, ticket, config_type=1)) == {"ok": True}
    assert error_of(judge(client, config_for(WINDOW, ticket, config_type=0))) == 52019
    assert judge(client, config_for(INTERNAL, app_ticket(client, INTERNAL))) == {"ok": True}  # other app unchanged


@pytest.mark.parametrize(
    ("overrides", "errcode"),
    [
        ({"agentId": "999"}, 52019),  # no app of the org has it
        ({"agentId": DEMO_WINDOW_AGENT_ID}, 52019),  # another org's app
        ({"corpId": "dingnobody"}, 52010),
        ({"timeStamp": "abc"}, 52018),
        ({"nonceStr": ""}, 52015),
        ({"url": ""}, 52014),
        ({"signature": "0" * 64}, 52013),
        ({"url": "https://h5.example.com/other"}, 52013),  # signed for another page
    ],
)
def test_malformed_or_misdirected_configs(client: FlaskClient, overrides: dict[str, Any], errcode: int) -> None:
    config = config_for(INTERNAL, app_ticket(client, INTERNAL))
    assert error_of(judge(client, {**config, **overrides})) == errcode


def test_another_apps_ticket_is_52011(client: FlaskClient) -> None:
    app_ticket(client, INTERNAL)  # the app has a live ticket of its own, so only the choice of ticket is wrong
    verdict = judge(client, config_for(INTERNAL, app_ticket(client, WINDOW)))
    assert error_of(verdict) == 52011 and "不属于" in verdict["errorMessage"]


def test_a_legacy_channel_ticket_is_52011(client: FlaskClient) -> None:
    app_ticket(client, WINDOW)
    token = client.get(
        "/channel/get_channel_token", query_string={"corpid": DEMO_CORPID, "channel_secret": DEMO_CHANNEL_SECRET}
    ).get_json()["access_token"]
    channel = client.get("/channel/get_channel_jsapi_ticket", query_string={"access_token": token}).get_json()
    assert error_of(judge(client, config_for(WINDOW, channel["ticket"]))) == 52011


def test_without_a_live_ticket_it_is_52011(client: FlaskClient, sim: Simulator) -> None:
    assert error_of(judge(client, config_for(INTERNAL, "never-issued"))) == 52011
    ticket = app_ticket(client, INTERNAL)
    assert judge(client, config_for(INTERNAL, ticket)) == {"ok": True}
    sim.advance(7201)  # the ticket expired and was not renewed
    assert error_of(judge(client, config_for(INTERNAL, ticket))) == 52011


def test_the_legacy_corp_is_still_judged_as_type_1(client: FlaskClient) -> None:
    """The app path does not capture the legacy corp: type 0 there is still its agent/type error."""
    config = config_for(INTERNAL, app_ticket(client, INTERNAL))
    assert error_of(judge(client, {**config, "corpId": DEMO_CORPID, "agentId": DEMO_AGENT_ID})) == 52019


def test_a_corpid_with_both_a_window_and_an_app_is_told_apart_by_agent_id(client: FlaskClient, sim: Simulator) -> None:
    sim.apps.add_org(DEMO_CORPID)
    sim.apps.add_app(DEMO_CORPID, app_key="both-app", app_secret="s", agent_id="4000001")
    app = {"corpid": DEMO_CORPID, "agent_id": "4000001", "key": "both-app", "secret": "s"}
    assert judge(client, config_for(app, app_ticket(client, app))) == {"ok": True}
    token = client.get(
        "/channel/get_channel_token", query_string={"corpid": DEMO_CORPID, "channel_secret": DEMO_CHANNEL_SECRET}
    ).get_json()["access_token"]
    channel = client.get("/channel/get_channel_jsapi_ticket", query_string={"access_token": token}).get_json()
    legacy = {"corpid": DEMO_CORPID, "agent_id": DEMO_AGENT_ID}
    assert judge(client, config_for(legacy, channel["ticket"], algorithm="sha1", config_type=1)) == {"ok": True}


@pytest.mark.parametrize(
    "kwargs",
    [{"sign_hash": "md5"}, {"config_type": 2}, {"config_type": True}, {"agent_id": DEMO_APP_AGENT_ID}],
    ids=["hash", "type", "bool-type", "duplicate-agent"],
)
def test_add_app_refuses_what_dingtalk_could_not_judge(sim: Simulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(SimulatorError):
        sim.apps.add_app(DEMO_ORG_CORPID, app_key="another", app_secret="s", **kwargs)


@pytest.mark.parametrize(
    "body",
    [
        {"app_key": DEMO_APP_KEY, "sign_hash": "md5"},
        {"app_key": DEMO_APP_KEY, "config_type": 3},
        {"app_key": "nobody", "sign_hash": "sha1"},
        {"sign_hash": "sha1"},
    ],
)
def test_the_dd_config_control_refuses_bad_settings(client: FlaskClient, body: dict[str, Any]) -> None:
    assert client.post("/_sim/app/dd_config", json=body).get_json()["errcode"] == 40035
    # Nothing changed: the default hash still passes.
    assert judge(client, config_for(INTERNAL, app_ticket(client, INTERNAL))) == {"ok": True}


@pytest.mark.parametrize("hash_name", ["sha1", "sha256"])
@pytest.mark.parametrize("target", [INTERNAL, WINDOW], ids=["internal", "service-window"])
def test_the_gateways_config_passes_in_both_hash_settings(
    app: Any, sim_server: SimulatorServer, target: dict[str, str], hash_name: str
) -> None:
    """End to end: GET /channel/config of a registration of either current kind, judged by the simulator, with the
    registration and the simulated app agreeing on the hash (and failing when they disagree)."""
    sim = sim_server.sim  # the one the gateway talks to (this module's `sim` is a frozen-clock one of its own)
    kind = KIND_INTERNAL if target is INTERNAL else SERVICE_WINDOW
    corp = Corp(
        corpid=target["corpid"],
        agent_id=target["agent_id"],
        origins=(ORIGIN,),
        kind=kind,
        app_key=target["key"],
        app_secret=target["secret"],
        sign_hash=hash_name,
    )
    get_runtime(app).registry.add(corp)
    sim.apps.set_dd_config(target["key"], sign_hash=hash_name)
    page = f"{ORIGIN}/login?next=%2Fhome"
    resp = app.test_client().get(
        "/channel/config", query_string={"corpid": target["corpid"], "agentid": target["agent_id"], "url": page}
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    config = resp.get_json()
    assert config["type"] == 0
    assert sim.check_config(**{**config, "url": page}) == {"ok": True}
    sim.apps.set_dd_config(target["key"], sign_hash="sha256" if hash_name == "sha1" else "sha1")
    assert sim.check_config(**{**config, "url": page})["errorCode"] == 52013
