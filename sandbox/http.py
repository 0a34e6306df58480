"""Serve a Simulator over HTTP exactly as DingTalk answers, plus client-side and control endpoints.

Upstream APIs are GET with query parameters and always answer HTTP 200 with errcode/errmsg (or an
injected raw body). `/_client/*` plays the DingTalk app inside the page; `/_sim/*` lets tests in other
processes steer the simulator. POST endpoints insist on application/json (43004), as DingTalk does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from sandbox.app_http import add_app_apis, app_posts
from sandbox.controls import DEFAULT_BLOCKED_IP, busiest_second
from sandbox.model import APIS, Reply, SimulatorError
from sandbox.state import Simulator

_MISSING: Any = object()

JsonView = Callable[[dict[str, Any]], dict[str, Any]]


def create_simulator_app(sim: Simulator) -> Flask:
    """Build the Flask app that serves sim."""
    app = Flask(__name__)
    # DingTalk sends raw UTF-8 Chinese, not \\u escapes: clients must decode properly.
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["dingtalk_simulator"] = sim

    for api in APIS:
        app.add_url_rule(f"/{api}", endpoint=api, view_func=_upstream_view(sim, api), methods=["GET"])

    def client_auth_code(body: dict[str, Any]) -> dict[str, Any]:
        return {"code": sim.mint_auth_code(_field(body, "corpid", str), _field(body, "unionid", str))}

    def client_employee_code(body: dict[str, Any]) -> dict[str, Any]:
        return {"code": sim.mint_employee_code(_field(body, "corpid", str), _field(body, "userid", str))}

    def client_check_config(body: dict[str, Any]) -> dict[str, Any]:
        return sim.check_config(
            corpId=_text(body.get("corpId")),
            agentId=_text(body.get("agentId")),
            timeStamp=_text(body.get("timeStamp")),
            nonceStr=_text(body.get("nonceStr")),
            signature=_text(body.get("signature")),
            type=_config_type(body.get("type")),
            url=_text(body.get("url")),
        )

    def sim_inject(body: dict[str, Any]) -> dict[str, Any]:
        sim.inject(
            _field(body, "api", str),
            _field(body, "errcode", int, default=-1),
            times=_field(body, "times", int, default=1),
            errmsg=_field(body, "errmsg", str, default="injected"),
            sub_code=_field(body, "sub_code", int, default=None),
            raw=_field(body, "raw", str, default=None),
            body=_field(body, "body", dict, default=None),
            corpid=_field(body, "corpid", str, default=None),
        )
        return _ok()

    def sim_latency(body: dict[str, Any]) -> dict[str, Any]:
        sim.set_latency(_field(body, "seconds", (int, float)), _field(body, "api", str, default="*"))
        return _ok()

    def sim_revoke(body: dict[str, Any]) -> dict[str, Any]:
        sim.revoke_tokens(_field(body, "corpid", str), _field(body, "pipeline", str, default="all"))
        return _ok()

    def sim_ticket_mode(body: dict[str, Any]) -> dict[str, Any]:
        sim.set_ticket_mode(_field(body, "corpid", str), _field(body, "mode", str))
        return _ok()

    def sim_busy(body: dict[str, Any]) -> dict[str, Any]:
        processed = body.get("processed", False)
        if not isinstance(processed, bool):  # _field refuses booleans (they are ints to Python)
            raise SimulatorError(40035, "不合法的参数: processed")
        sim.set_busy(
            _field(body, "fraction", (int, float)),
            _field(body, "api", str, default="*"),
            processed=processed,
            seed=_field(body, "seed", int, default=None),
        )
        return _ok()

    def sim_advance(body: dict[str, Any]) -> dict[str, Any]:
        sim.advance(_field(body, "seconds", (int, float)))
        return _ok()

    def sim_lifetime(body: dict[str, Any]) -> dict[str, Any]:
        sim.set_lifetime(_field(body, "seconds", (int, float), default=None))  # null: DingTalk's own again
        return _ok()

    def sim_reset_calls(body: dict[str, Any]) -> dict[str, Any]:
        sim.reset_calls()
        return _ok()

    def sim_ip_blocked(body: dict[str, Any]) -> dict[str, Any]:
        ip = body.get("ip", DEFAULT_BLOCKED_IP)  # an explicit null clears the block
        if ip is not None and not isinstance(ip, str):
            raise SimulatorError(40035, "不合法的参数: ip")
        sim.set_ip_blocked(_field(body, "corpid", str), ip)
        return _ok()

    posts: dict[str, JsonView] = {
        "/_client/auth_code": client_auth_code,
        "/_client/employee_code": client_employee_code,
        "/_client/check_config": client_check_config,
        "/_sim/inject": sim_inject,
        "/_sim/latency": sim_latency,
        "/_sim/busy": sim_busy,
        "/_sim/revoke": sim_revoke,
        "/_sim/ticket_mode": sim_ticket_mode,
        "/_sim/advance": sim_advance,
        "/_sim/lifetime": sim_lifetime,
        "/_sim/reset_calls": sim_reset_calls,
        "/_sim/ip_blocked": sim_ip_blocked,
        **app_posts(sim, _field),
    }
    add_app_apis(app, sim)
    for path, view in posts.items():
        app.add_url_rule(path, endpoint=path, view_func=_json_view(view), methods=["POST"])

    @app.get("/_sim/calls")
    def sim_calls() -> Response:
        """Answer the call count for the optional api and corpid filters."""
        count = sim.calls(request.args.get("api") or None, request.args.get("corpid") or None)
        return jsonify({"calls": count})

    @app.get("/_sim/arrivals")
    def sim_arrivals() -> Response:
        """Answer when each call arrived (and the busiest second) for the optional api and corpid filters."""
        times = sim.arrivals(request.args.get("api") or None, request.args.get("corpid") or None)
        return jsonify({"arrivals": times, "busiest_second": busiest_second(times)})

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        """Answer routing errors (404, 405, ...) with a DingTalk-shaped body and the real status."""
        response = jsonify({"errcode": 40035, "errmsg": f"不合法的请求: {error.name}"})
        response.status_code = error.code or 400
        return response

    return app


def _upstream_view(sim: Simulator, api: str) -> Callable[[], Response]:
    """Build the GET view for one upstream API."""

    def view() -> Response:
        return _render(sim.respond(api, request.args.to_dict()))

    view.__name__ = f"upstream_{api.replace('/', '_')}"
    return view


def _json_view(handler: JsonView) -> Callable[[], Response]:
    """Wrap a JSON-in, JSON-out handler with DingTalk's content-type and error conventions."""

    def view() -> Response:
        if request.mimetype != "application/json":
            return jsonify({"errcode": 43004, "errmsg": "无效的HTTP HEADER Content-Type"})
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify({"errcode": 40035, "errmsg": "不合法的参数: body must be a JSON object"})
        try:
            return jsonify(handler(body))
        except SimulatorError as e:
            return jsonify(e.reply())

    view.__name__ = f"json_{handler.__name__}"
    return view


def _render(reply: Reply) -> Response:
    """Turn a simulator reply into an HTTP 200 response."""
    if isinstance(reply, str):
        return Response(reply, status=200, mimetype="text/html")
    return jsonify(reply)


def _ok() -> dict[str, Any]:
    """Return DingTalk's success body."""
    return {"errcode": 0, "errmsg": "ok"}


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, default: Any = _MISSING) -> Any:
    """Return body[name] if it has the expected JSON type, the default if absent, else raise 40035."""
    if name not in body or (body[name] is None and default is not _MISSING):
        if default is _MISSING:
            raise SimulatorError(40035, f"不合法的参数: {name}")
        return default
    value = body[name]
    # JSON true/false are Python bools, which are also ints: never accept them as numbers.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SimulatorError(40035, f"不合法的参数: {name}")
    return value


def _text(value: Any) -> str:
    """Read a dd.config field as the client would stringify it; absent or odd values become empty."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | str):
        return str(value)
    return ""


def _config_type(value: Any) -> int:
    """Read dd.config's type, accepting the number or its decimal string; anything else is 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return 0
