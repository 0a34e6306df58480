"""Sandbox mode inside the gateway: the demo corp, and the simulated DingTalk client the page talks to.

The page's simulated `dd` (static/sandbox-dd.js) calls these routes on the gateway's own origin, and they
forward to the simulator's client side (`/_client/...`), wherever the simulator runs (a thread in this process,
or a shared `python -m sandbox` process for several workers).
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from flask import Blueprint, Flask, Response, jsonify, request

from corp.registry import Corp
from gateway.validation import json_object
from oapi.errors import UpstreamUnavailable
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID, DEMO_PEOPLE
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
    """Register the demo corp for the sandbox's origins (idempotent)."""
    origins = tuple(o.strip() for o in get_runtime(app).settings.sandbox_origins.split(",") if o.strip())
    get_runtime(app).registry.add(
        Corp(
            corpid=DEMO_CORPID,
            agent_id=DEMO_AGENT_ID,
            origins=origins,
            corp_secret=DEMO_CORP_SECRET,
            channel_secret=DEMO_CHANNEL_SECRET,
        )
    )


def _forward(path: str, body: dict[str, Any]) -> Response:
    base = get_runtime().settings.dingtalk_api_base
    try:
        resp = requests.post(f"{base}/_client/{path}", json=body, timeout=5)
        data = resp.json()
    except (requests.RequestException, ValueError) as e:
        raise UpstreamUnavailable("The sandbox simulator did not answer") from e
    return jsonify(data)


def _body() -> dict[str, Any]:
    return json_object(request.get_json(silent=True))


@bp.get("/people")
def people() -> Response:
    """The demo followers a tester can sign in as (no secrets: public demo data)."""
    return jsonify(
        {
            "corpid": DEMO_CORPID,
            "agentid": DEMO_AGENT_ID,
            "people": [{k: p[k] for k in ("label", "name", "unionid", "userid")} for p in DEMO_PEOPLE],
        }
    )


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
