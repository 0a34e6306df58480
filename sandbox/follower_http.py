"""Serve a service window's follower APIs (`sandbox.followers`) on the simulator's HTTP server, as DingTalk does.

`GET /v1.0/link/followers/statuses?userId=[&accountId=]` and `GET /v1.0/link/followers?nextToken=&maxResults=` take
the token in the `x-acs-dingtalk-access-token` header (in the query: 400 AuthenticationFailed.MissingParameter);
`POST /topapi/user/getbyunionid?access_token=` keeps the oapi style. `/_sim/app/follow`, `/_sim/app/link` and
`/_sim/app/recognised` steer the followers; every call passes the controls of `sandbox.app_controls`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from sandbox.followers import FOLLOWER_V1_APIS, GET_BY_UNIONID
from sandbox.model import SimulatorError
from sandbox.state import Simulator
from sandbox.v1_views import ok, topapi_view, v1_view

JsonView = Callable[[dict[str, Any]], dict[str, Any]]
Field = Callable[..., Any]


def add_follower_apis(app: Flask, sim: Simulator) -> None:
    """Route the follower endpoints of sandbox.followers on app."""
    for api in FOLLOWER_V1_APIS:
        app.add_url_rule(f"/{api}", endpoint=api, view_func=_followers_view(sim, api), methods=["GET"])
    app.add_url_rule(
        f"/{GET_BY_UNIONID}",
        endpoint=GET_BY_UNIONID,
        view_func=topapi_view("getbyunionid", lambda token, body: respond_get_by_unionid(sim, token, body)),
        methods=["POST"],
    )


def follower_posts(sim: Simulator, field: Field) -> dict[str, JsonView]:
    """The JSON-in, JSON-out controls of sandbox.followers (`field` reads a typed field)."""

    def sim_app_follow(body: dict[str, Any]) -> dict[str, Any]:
        followed = body.get("followed", True)
        if not isinstance(followed, bool):  # field refuses booleans (they are ints to Python)
            raise SimulatorError(40035, "不合法的参数: followed")
        corpid, userid = field(body, "corpid", str), field(body, "userid", str)
        (sim.followers.follow if followed else sim.followers.unfollow)(corpid, userid)
        return ok()

    def sim_app_link(body: dict[str, Any]) -> dict[str, Any]:
        sim.followers.link(field(body, "corpid", str), field(body, "userid", str), field(body, "real_userid", str))
        return ok()

    def sim_app_recognised(body: dict[str, Any]) -> dict[str, Any]:
        ids = field(body, "ids", list)
        if not all(isinstance(i, str) for i in ids):
            raise SimulatorError(40035, "不合法的参数: ids")
        sim.followers.set_recognised(field(body, "corpid", str), ids)
        return ok()

    return {
        "/_sim/app/follow": sim_app_follow,
        "/_sim/app/link": sim_app_link,
        "/_sim/app/recognised": sim_app_recognised,
    }


def respond_followers(
    sim: Simulator, api: str, token: str | None, args: dict[str, str]
) -> tuple[int, dict[str, Any] | str]:
    """Answer one /v1.0/link/followers* call behind the controls."""
    sim.app_controls.wait(api)
    with sim.apps.world.lock:
        imposed = sim.app_controls.screen(api, sim.apps.caller(api, token, {}))
        return imposed if imposed is not None else sim.followers.answer_v1(api, token, args)


def respond_get_by_unionid(sim: Simulator, token: str | None, body: dict[str, Any]) -> dict[str, Any] | str:
    """Answer one topapi getbyunionid call behind the controls."""
    sim.app_controls.wait(GET_BY_UNIONID)
    with sim.apps.world.lock:
        imposed = sim.app_controls.screen(GET_BY_UNIONID, sim.apps.caller(GET_BY_UNIONID, token, body))
        return imposed[1] if imposed is not None else sim.followers.answer_get_by_unionid(token, body)


def _followers_view(sim: Simulator, api: str) -> Callable[[], Response]:
    return v1_view(api, lambda token: respond_followers(sim, api, token, dict(request.args.items())))
