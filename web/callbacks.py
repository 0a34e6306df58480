"""The DingTalk push receiver's route: ``POST /ding/callback/<corpid>``; the push itself is handled in
corp/callbacks.py (checks, decryption, the event log, the acknowledgement)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from corp.callbacks import CALLBACKS, handle_push, parse_push
from gateway.errors import contract_of
from kit.errors import Failure
from web.runtime import get_runtime

bp = Blueprint("callbacks", __name__)


@bp.post("/ding/callback/<corpid>")
def receive(corpid: str) -> Response:
    """Receive one DingTalk push."""
    rt = get_runtime()
    # Its own body limit, set before the body is read: pushes are larger than anything else the gateway takes.
    request.max_content_length = rt.settings.callback_max_body
    try:
        push = parse_push(request.args, request.get_json(force=True, silent=True))
        reply = handle_push(rt, corpid, push)
    except Failure as e:
        CALLBACKS.labels("-", contract_of(e)[1]).inc()
        raise
    return jsonify(reply)
