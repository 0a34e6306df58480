"""Sandbox mode inside the gateway: one demo login app of each kind, and the simulated DingTalk client the page talks
to.

The page's simulated `dd` (static/sandbox-dd.js) calls these routes on the gateway's own origin, and they
forward to the simulator's client side (`/_client/...`), wherever the simulator runs (a thread in this process,
or a shared `python -m sandbox` process for several workers).
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from flask import Blueprint, Flask, Response, jsonify, request

from corp.registry import CHANNEL, INTERNAL, SERVICE_WINDOW, Corp, default_hash
from gateway.errors import InvalidRequest, UnknownCorp
from gateway.validation import json_object
from oapi.errors import UpstreamUnavailable
from sandbox.demo import (
    DEMO_AGENT_ID,
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_CHANNEL_SECRET,
    DEMO_CORP_SECRET,
    DEMO_CORPID,
    DEMO_FOLLOWERS,
    DEMO_MEMBERS,
    DEMO_ORG_CORPID,
    DEMO_PEOPLE,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from web.runtime import get_runtime

log = logging.getLogger(__name__)
bp = Blueprint("sandbox", __name__, url_prefix="/sandbox")
SIM_EXTENSION = "dtgw.simulator"


def start_simulator(app: Flask) -> str:
    """Run the demo simulator on a loopback port in this process; return its base URL."""
    from sandbox.server import SimulatorServer
    from sandbox.state import Simulator

    server = SimulatorServer(Simulator.demo())
    server.start()
    app.extensions[SIM_EXTENSION] = server
    log.warning("sandbox mode: DingTalk simulator at %s (demo corp %s)", server.base_url, DEMO_CORPID)
    return server.base_url


def register_demo_corp(app: Flask) -> None:
    """Register one demo login app of each kind for the sandbox's origins (idempotent): the legacy service window,
    the real org's internal app, and the current service window mapped into that org. The window admits followers
    only (`require_follow`), so the demo's unfollowed follower shows the page's not_following view."""
    origins = tuple(o.strip() for o in get_runtime(app).settings.sandbox_origins.split(",") if o.strip())
    registry = get_runtime(app).registry
    registry.add(
        Corp(
            corpid=DEMO_CORPID,
            agent_id=DEMO_AGENT_ID,
            origins=origins,
            corp_secret=DEMO_CORP_SECRET,
            channel_secret=DEMO_CHANNEL_SECRET,
        )
    )
    registry.add(
        Corp(
            corpid=DEMO_ORG_CORPID,
            kind=INTERNAL,
            agent_id=DEMO_APP_AGENT_ID,
            origins=origins,
            sign_hash=default_hash(INTERNAL),
            app_key=DEMO_APP_KEY,
            app_secret=DEMO_APP_SECRET,
        )
    )
    registry.add(
        Corp(
            corpid=DEMO_WINDOW_CORPID,
            kind=SERVICE_WINDOW,
            agent_id=DEMO_WINDOW_AGENT_ID,
            origins=origins,
            sign_hash=default_hash(SERVICE_WINDOW),
            app_key=DEMO_WINDOW_APP_KEY,
            app_secret=DEMO_WINDOW_APP_SECRET,
            map_via=DEMO_ORG_CORPID,
            require_follow=True,
        )
    )


def demo_people(corpid: str) -> tuple[str, str, list[dict[str, Any]]]:
    """The kind, agent id and pickable people of a demo corp (public demo data: labels, names and ids only).

    The internal app lists the real org's employees only: an external contact is no member of the workbench, and
    the gateway reports everyone who signs in with an internal app as an employee (contact_type 0).
    """
    if corpid == DEMO_CORPID:
        return CHANNEL, DEMO_AGENT_ID, [{k: p[k] for k in ("label", "name", "unionid", "userid")} for p in DEMO_PEOPLE]
    if corpid == DEMO_ORG_CORPID:
        employees = [m for m in DEMO_MEMBERS if m["contact_type"] == 0]
        return (
            INTERNAL,
            DEMO_APP_AGENT_ID,
            [{"label": "员工", "name": m["name"], "userid": m["userid"]} for m in employees],
        )
    if corpid == DEMO_WINDOW_CORPID:
        followers = [{k: f[k] for k in ("label", "name", "userid")} for f in DEMO_FOLLOWERS]
        return SERVICE_WINDOW, DEMO_WINDOW_AGENT_ID, followers
    raise UnknownCorp(f"{corpid} is none of the sandbox's demo corps")


def _forward(path: str, body: dict[str, Any]) -> Response:
    return _simulator(f"_client/{path}", body)


def _simulator(path: str, body: dict[str, Any]) -> Response:
    base = get_runtime().settings.dingtalk_api_base
    try:
        resp = requests.post(f"{base}/{path}", json=body, timeout=5)
        data = resp.json()
    except (requests.RequestException, ValueError) as e:
        raise UpstreamUnavailable("The sandbox simulator did not answer") from e
    return jsonify(data)


def _body() -> dict[str, Any]:
    return json_object(request.get_json(silent=True))


@bp.get("/people")
def people() -> Response:
    """The people a tester can sign in as on the page of `?corpid=` (the legacy demo corp when absent)."""
    corpid = request.args.get("corpid") or DEMO_CORPID
    kind, agentid, pickable = demo_people(corpid)
    return jsonify({"corpid": corpid, "agentid": agentid, "kind": kind, "people": pickable})


@bp.post("/client/check_config")
def check_config() -> Response:
    """What the DingTalk client does with dd.config: check it against the current ticket."""
    body = _body()
    fields = ("corpId", "agentId", "timeStamp", "nonceStr", "signature", "type", "url")
    return _forward("check_config", {k: body.get(k) for k in fields})


@bp.post("/client/auth_code")
def auth_code() -> Response:
    """What dd.channel.permission.requestAuthCode does: mint a single-use code for the chosen follower."""
    body = _body()
    return _forward("auth_code", {"corpid": body.get("corpid"), "unionid": body.get("unionid")})


@bp.post("/client/app_code")
def app_code() -> Response:
    """What dd.requestAuthCode({corpId, clientId}) does: mint a single-use code of the app for the chosen member.

    The older dd.runtime.permission.requestAuthCode({corpId}) sends no clientId: the real container knows which app
    opened the page; the sandbox stands in with the app registered for the corpid.
    """
    body = _body()
    corpid, client_id = body.get("corpid"), body.get("client_id")
    if client_id is None and isinstance(corpid, str) and corpid:
        client_id = get_runtime().corp(corpid).app_key or None
    return _forward("app_code", {"corpid": corpid, "client_id": client_id, "userid": body.get("userid")})


@bp.post("/stream/push")
def stream_push() -> Response:
    """Have the simulated DingTalk send an event over Stream mode to a demo app of a current kind.

    Body `{"corpid", "event_type", "data"}`, e.g. `{"corpid": "dingdemoorg0001", "event_type": "user_leave_org",
    "data": {"userId": ["manager0001"]}}`; `flask events stream` (scripts/serve runs it) records it, and
    `flask corp events CORPID` shows it.
    """
    body = _body()
    corpid = body.get("corpid")
    corp = get_runtime().corp(corpid if isinstance(corpid, str) else "")
    if not corp.current:
        raise InvalidRequest(f"Corp {corp.corpid} is of kind {corp.kind}, which has no Stream mode")
    forwarded = {"app_key": corp.app_key, "event_type": body.get("event_type"), "data": body.get("data", {})}
    return _simulator("_sim/stream/push", forwarded)
