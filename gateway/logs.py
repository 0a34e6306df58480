"""Logging with a request id on every line; what is logged never includes secrets, tokens, tickets or codes."""

from __future__ import annotations

import logging
import random
import re

from flask import Flask, Response, g, has_request_context, request

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamp each record with the current request's id (or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


class RedactQueryFilter(logging.Filter):
    """Cut query strings out of HTTP client log lines: DingTalk takes secrets, tokens and codes in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                a.split("?", 1)[0] + "?<redacted>" if isinstance(a, str) and "?" in a else a for a in record.args
            )
        if isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = re.sub(r"\?\S*", "?<redacted>", record.msg)
        return True


def configure_logging() -> None:
    """Give the root logger one handler with request ids, unless the host (gunicorn, pytest) set one up."""
    for name in ("urllib3.connectionpool", "urllib3.util.retry", "requests"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
            logger.addFilter(RedactQueryFilter())
    root = logging.getLogger()
    if not any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RequestIdFilter())
        if not root.handlers:
            root.addHandler(handler)
        else:
            for existing in root.handlers:
                existing.addFilter(RequestIdFilter())
        if root.level == logging.WARNING or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)


def init_app(app: Flask) -> None:
    """Assign each request an id (the caller's X-Request-Id if sane) and echo it back."""

    @app.before_request
    def _request_id() -> None:
        given = request.headers.get("X-Request-Id", "")
        # An id only has to be unique, not unguessable: `random` (reseeded in every forked worker) needs no
        # os.urandom call, which in a threaded worker gives up the GIL on every request.
        g.request_id = given if _REQUEST_ID_RE.match(given) else f"{random.getrandbits(128):032x}"

    @app.after_request
    def _echo(response: Response) -> Response:
        if "request_id" in g:
            response.headers["X-Request-Id"] = g.request_id
        return response
