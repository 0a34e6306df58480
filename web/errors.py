"""The one place that turns errors into the contract's JSON envelope."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    contract_of,
    envelope,
)
from gateway.logs import current_request_id
from gateway.store import store_fault
from gateway.validation import query_text
from kit.errors import Failure

log = logging.getLogger(__name__)


def render(error: Failure) -> Response:
    """The contract's JSON for any typed error: the gateway's own, or DingTalk's from oapi."""
    response = jsonify(envelope(error, current_request_id()))
    response.status_code = contract_of(error)[0]
    if error.retry_after:
        response.headers["Retry-After"] = str(int(error.retry_after))
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(Failure)
    def _typed_error(e: Failure) -> Response:
        status, code = contract_of(e)
        if status >= 500:
            log.warning("%s %s (errcode=%s)", code, e.message, e.errcode)
        return render(e)

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        mapped: GatewayError
        if e.code == 404:
            mapped = NotFound("No such route")
        elif e.code == 405:
            mapped = MethodNotAllowed("Method not allowed on this route")
        elif e.code == 413:
            mapped = PayloadTooLarge("The request body is too large")
        elif e.code and 400 <= e.code < 500:
            mapped = InvalidRequest(e.description or "Bad request")
            mapped.status = e.code
        else:
            mapped = GatewayError("Internal error")
        response = render(mapped)
        if e.code == 405 and e.response is None:
            allow = e.get_headers()
            for name, value in allow:
                if name.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(redis.exceptions.RedisError)
    @app.errorhandler(redis.exceptions.RedisClusterException)  # not a RedisError: a slot no node serves, …
    def _store_down(e: Exception) -> Response:
        # Not only a lost connection: a full Redis (OOM), a replica after a failover (READONLY), a cluster whose
        # slots are moving and the like answer with an error while the store recovers. What else Redis refuses
        # is a bug (500).
        fault = store_fault(e)
        if fault is None:
            return _unexpected(e)
        log.error("store %s: %s", fault, type(e).__name__)
        return render(
            StoreUnavailable(
                f"The gateway's store (Redis) {fault}",
                hint=f"The gateway's store (Redis) {fault}. What needs it fails until it recovers (reads go on "
                "where Redis still serves them); the gateway recovers by itself, with no restart.",
                retry_after=2,
            )
        )

    @app.errorhandler(UnicodeDecodeError)
    def _undecodable(e: UnicodeDecodeError) -> Response:
        # werkzeug decodes the query string as UTF-8 when a view first reads request.args, and raises on bytes
        # that are not: that is the caller's mistake, not ours. Any other decoding error is a bug.
        try:
            query_text(request.environ.get("QUERY_STRING", ""))
        except InvalidRequest as bad_query:
            return render(bad_query)
        return _unexpected(e)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception) -> Response:
        # The traceback goes to the log only (tied to the request id), never to the caller.
        log.exception("unhandled error")
        return render(GatewayError("Internal error"))
