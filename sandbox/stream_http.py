"""Serve the simulated Stream gateway (`sandbox.stream`) on the simulator's HTTP server, as DingTalk does.

`POST /v1.0/gateway/connections/open` takes `{"clientId","clientSecret","subscriptions","ua"}` and answers
`{"endpoint","ticket"}` (errors as v1.0 statuses, behind the controls of `sandbox.app_controls`). The controls
steer it from tests and from a person trying sandbox mode (`curl` against `python -m sandbox`):

    POST /_sim/stream/push        {"app_key", "event_type", "data", ["event_id"], ["corp_id"]} -> {"event_id"}
    POST /_sim/stream/duplicate   {"app_key", "event_id"}         deliver an event again
    POST /_sim/stream/drop        {"app_key"}                     cut its connections (no closing handshake)
    POST /_sim/stream/disconnect  {"app_key"}                     send the `disconnect` system message
    POST /_sim/stream/ping        {"app_key"}                     send a `ping` system message
    POST /_sim/stream/settings    {["redeliver_after"], ["ping_interval"], ["disconnect_grace"]}  (null: off)
    GET  /_sim/stream/state?app_key=   connections, pending event ids and acknowledgements
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request

from sandbox.model import SimulatorError
from sandbox.state import Simulator
from sandbox.stream import OPEN_CONNECTION
from sandbox.v1_views import ok, v1_view

JsonView = Callable[[dict[str, Any]], dict[str, Any]]
Field = Callable[..., Any]
_MAX_SETTING = 3600.0


def add_stream_apis(app: Flask, sim: Simulator) -> None:
    """Route the connection-open endpoint and the state view on app."""

    def answer(token: str | None) -> tuple[int, dict[str, Any] | str]:
        body = request.get_json(silent=True)
        return respond_open(sim, body if isinstance(body, dict) else {})

    # No token at all here (the body carries the app's credentials), so nothing in the query is refused.
    view = v1_view(OPEN_CONNECTION, answer, token_in_query_refused=False)
    app.add_url_rule(f"/{OPEN_CONNECTION}", endpoint=OPEN_CONNECTION, view_func=view, methods=["POST"])

    @app.get("/_sim/stream/state")
    def sim_stream_state() -> Response:
        """Answer an app's connections, pending events and acknowledgements (of events)."""
        app_key = request.args.get("app_key") or ""
        stream = sim.stream
        return jsonify(
            {
                "connections": [
                    {"id": c.id, "opened_at": c.opened_at, "closed_at": c.closed_at, "how": c.how}
                    for c in stream.connections(app_key)
                ],
                "pending": stream.pending(app_key),
                "acks": [
                    {"event_id": a.event_id, "message_id": a.message_id, "code": a.code, "at": a.at}
                    for a in stream.acks(app_key)
                ],
            }
        )


def stream_posts(sim: Simulator, field: Field) -> dict[str, JsonView]:
    """The JSON-in, JSON-out controls of the Stream gateway (`field` reads a typed field)."""

    def app_key_of(body: dict[str, Any]) -> str:
        app_key = field(body, "app_key", str)
        with sim.apps.world.lock:
            if app_key not in sim.apps.apps:
                raise SimulatorError(40035, f"no app {app_key}")
        return str(app_key)

    def sim_stream_push(body: dict[str, Any]) -> dict[str, Any]:
        data = body.get("data", {})
        if not isinstance(data, dict | list):
            raise SimulatorError(40035, "不合法的参数: data")
        event_id = sim.stream.push(
            app_key_of(body),
            field(body, "event_type", str),
            data,
            event_id=field(body, "event_id", str, default=None),
            corp_id=field(body, "corp_id", str, default=None),
        )
        return {**ok(), "event_id": event_id}

    def sim_stream_duplicate(body: dict[str, Any]) -> dict[str, Any]:
        try:
            sim.stream.duplicate(app_key_of(body), field(body, "event_id", str))
        except ValueError as e:
            raise SimulatorError(40035, str(e)) from None
        return ok()

    def sim_stream_drop(body: dict[str, Any]) -> dict[str, Any]:
        return {**ok(), "connections": sim.stream.drop(app_key_of(body))}

    def sim_stream_disconnect(body: dict[str, Any]) -> dict[str, Any]:
        return {**ok(), "connections": sim.stream.disconnect(app_key_of(body))}

    def sim_stream_ping(body: dict[str, Any]) -> dict[str, Any]:
        return {**ok(), "connections": sim.stream.ping(app_key_of(body))}

    def sim_stream_settings(body: dict[str, Any]) -> dict[str, Any]:
        stream = sim.stream
        for name in ("redeliver_after", "ping_interval", "disconnect_grace"):
            if name not in body:
                continue
            value = body[name]
            if value is None and name != "disconnect_grace":
                setattr(stream, name, None)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= _MAX_SETTING:
                raise SimulatorError(40035, f"不合法的参数: {name}")
            setattr(stream, name, float(value))
        return ok()

    return {
        "/_sim/stream/push": sim_stream_push,
        "/_sim/stream/duplicate": sim_stream_duplicate,
        "/_sim/stream/drop": sim_stream_drop,
        "/_sim/stream/disconnect": sim_stream_disconnect,
        "/_sim/stream/ping": sim_stream_ping,
        "/_sim/stream/settings": sim_stream_settings,
    }


def respond_open(sim: Simulator, body: dict[str, Any]) -> tuple[int, dict[str, Any] | str]:
    """Answer one connection-open call behind the controls (latency, injected errors, call counts)."""
    sim.app_controls.wait(OPEN_CONNECTION)
    client_id = body.get("clientId")
    with sim.apps.world.lock:
        imposed = sim.app_controls.screen(OPEN_CONNECTION, client_id if isinstance(client_id, str) else None)
    return imposed if imposed is not None else sim.stream.open(body)
