"""The Flask views every current-generation endpoint of the simulator shares: a v1.0 call (the token only in the
header: in the query it is refused as DingTalk refuses it) and a topapi call (a JSON body, HTTP 200 with errcode)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, jsonify, request

from sandbox.apps import TOKEN_HEADER, V1Error
from sandbox.model import SimulatorError

# token -> (HTTP status, JSON answer, or an HTML page as a blocked IP gets); the view reads the body or the query
V1Answer = Callable[[str | None], tuple[int, dict[str, Any] | str]]
# (token, JSON body) -> topapi answer (JSON, or an HTML page)
TopapiAnswer = Callable[[str | None, dict[str, Any]], dict[str, Any] | str]


def render(status: int, body: dict[str, Any] | str) -> Response:
    """JSON, or an HTML page where DingTalk's egress-IP block answers without JSON."""
    if isinstance(body, str):
        return Response(body, status=status, mimetype="text/html")
    response = jsonify(body)
    response.status_code = status
    return response


def v1_view(api: str, answer: V1Answer, *, token_in_query_refused: bool = True) -> Callable[[], Response]:
    """A v1.0 endpoint: `answer(token from the header)`, unless the caller put a token in the query."""

    def view() -> Response:
        body: dict[str, Any] | str
        if token_in_query_refused and "access_token" in request.args:
            status, body = V1Error(400, "AuthenticationFailed.MissingParameter", f"缺少参数 {TOKEN_HEADER}").answer()
        else:
            status, body = answer(request.headers.get(TOKEN_HEADER))
        return render(status, body)

    view.__name__ = f"v1_{api.replace('/', '_').replace('.', '_')}"
    return view


def topapi_view(name: str, answer: TopapiAnswer) -> Callable[[], Response]:
    """A topapi endpoint (POST JSON, `?access_token=`): the content type and body checked as DingTalk checks them."""

    def view() -> Response:
        if request.mimetype != "application/json":
            return jsonify({"errcode": 43004, "errmsg": "无效的HTTP HEADER Content-Type"})
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return jsonify(SimulatorError(40035, "不合法的参数: body must be a JSON object").reply())
        return render(200, answer(request.args.get("access_token"), body))

    view.__name__ = f"topapi_{name}"
    return view


def ok() -> dict[str, Any]:
    return {"errcode": 0, "errmsg": "ok"}
