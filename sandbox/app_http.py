"""Serve the current-generation APIs (`sandbox.apps`) on the simulator's HTTP server, as DingTalk does.

`POST /v1.0/oauth2/...` takes a JSON body and the token in the `x-acs-dingtalk-access-token` header (in the query it
is refused: 400 AuthenticationFailed.MissingParameter), and answers errors with non-2xx statuses. `POST
/topapi/v2/user/getuserinfo?access_token=` keeps the oapi style. `/_client/app_code` plays dd.requestAuthCode;
`/_sim/app/*` steers `sandbox.app_controls` (and `/_sim/app/dd_config` how an app's dd.config is judged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request

from sandbox.apps import ACCESS_TOKEN, GET_USER_INFO, V1_APIS
from sandbox.follower_http import add_follower_apis, follower_posts
from sandbox.state import Simulator
from sandbox.stream_http import add_stream_apis, stream_posts
from sandbox.v1_views import ok, topapi_view, v1_view

JsonView = Callable[[dict[str, Any]], dict[str, Any]]
Field = Callable[..., Any]


def add_app_apis(app: Flask, sim: Simulator) -> None:
    """Route the v1.0 and topapi endpoints of sandbox.apps, and the call counts, on app."""
    for api in V1_APIS:
        app.add_url_rule(f"/{api}", endpoint=api, view_func=_app_view(sim, api), methods=["POST"])
    getuserinfo = topapi_view("getuserinfo", lambda token, body: respond_user_info(sim, token, body))
    app.add_url_rule(f"/{GET_USER_INFO}", endpoint=GET_USER_INFO, view_func=getuserinfo, methods=["POST"])
    add_follower_apis(app, sim)
    add_stream_apis(app, sim)

    @app.get("/_sim/app/calls")
    def sim_app_calls() -> Response:
        """Answer the call count of the current-generation APIs for the optional api and app_key filters."""
        count = sim.app_controls.calls(request.args.get("api") or None, request.args.get("app_key") or None)
        return jsonify({"calls": count})


def app_posts(sim: Simulator, field: Field) -> dict[str, JsonView]:
    """The JSON-in, JSON-out client-side and control endpoints of sandbox.apps (`field` reads a typed field)."""

    def client_app_code(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "code": sim.apps.mint_app_code(
                field(body, "corpid", str), field(body, "client_id", str), field(body, "userid", str)
            )
        }

    def sim_app_qps(body: dict[str, Any]) -> dict[str, Any]:
        limit = field(body, "limit", int, default=None)  # null lifts the limit
        sim.app_controls.set_qps_limit(
            field(body, "api", str), limit, app_key=field(body, "app_key", str, default=None)
        )
        return ok()

    def sim_app_inject(body: dict[str, Any]) -> dict[str, Any]:
        sim.app_controls.inject(
            field(body, "api", str),
            field(body, "status", int),
            field(body, "code", str),
            times=field(body, "times", int, default=1),
            message=field(body, "message", str, default="injected"),
            app_key=field(body, "app_key", str, default=None),
        )
        return ok()

    def sim_app_ip_block(body: dict[str, Any]) -> dict[str, Any]:
        sim.app_controls.inject_ip_block(
            field(body, "api", str),
            html=field(body, "html", bool, default=False),
            wait=field(body, "wait", int, default=5),
            times=field(body, "times", int, default=1),
        )
        return ok()

    def sim_app_latency(body: dict[str, Any]) -> dict[str, Any]:
        sim.app_controls.set_latency(field(body, "api", str), field(body, "seconds", (int, float)))
        return ok()

    def sim_app_revoke(body: dict[str, Any]) -> dict[str, Any]:
        sim.apps.revoke_app_tokens(field(body, "app_key", str))
        return ok()

    def sim_app_dd_config(body: dict[str, Any]) -> dict[str, Any]:
        # How DingTalk judges the app's dd.config (§7.2 leaves the hash and the type open): null keeps the setting.
        sim.apps.set_dd_config(
            field(body, "app_key", str),
            sign_hash=field(body, "sign_hash", str, default=None),
            config_type=field(body, "config_type", int, default=None),
        )
        return ok()

    def sim_app_reset_calls(body: dict[str, Any]) -> dict[str, Any]:
        sim.app_controls.reset_calls()
        return ok()

    return {
        "/_client/app_code": client_app_code,
        "/_sim/app/qps": sim_app_qps,
        "/_sim/app/inject": sim_app_inject,
        "/_sim/app/latency": sim_app_latency,
        "/_sim/app/revoke": sim_app_revoke,
        "/_sim/app/dd_config": sim_app_dd_config,
        "/_sim/app/ip_block": sim_app_ip_block,
        "/_sim/app/reset_calls": sim_app_reset_calls,
        **follower_posts(sim, field),
        **stream_posts(sim, field),
    }


def respond_v1(sim: Simulator, api: str, token: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any] | str]:
    """Answer one v1.0 call behind the controls."""
    apps = sim.apps
    sim.app_controls.wait(api)
    with apps.world.lock:
        imposed = sim.app_controls.screen(api, apps.caller(api, token, body))
        return imposed if imposed is not None else apps.answer_v1(api, token, body)


def respond_user_info(sim: Simulator, token: str | None, body: dict[str, Any]) -> dict[str, Any] | str:
    """Answer one topapi getuserinfo call behind the controls."""
    apps = sim.apps
    sim.app_controls.wait(GET_USER_INFO)
    with apps.world.lock:
        imposed = sim.app_controls.screen(GET_USER_INFO, apps.caller(GET_USER_INFO, token, body))
        return imposed[1] if imposed is not None else apps.answer_user_info(token, body)


def _app_view(sim: Simulator, api: str) -> Callable[[], Response]:
    def answer(token: str | None) -> tuple[int, dict[str, Any] | str]:
        body = request.get_json(silent=True)
        return respond_v1(sim, api, token, body if isinstance(body, dict) else {})

    # The token fetch itself takes no token, so nothing in its query is refused.
    return v1_view(api, answer, token_in_query_refused=api != ACCESS_TOKEN)
