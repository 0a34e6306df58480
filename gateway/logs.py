"""Logging with a request id on every line; what is logged never includes secrets, tokens, tickets or codes."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable
from typing import Any

from flask import Flask, has_request_context, request
from gunicorn.glogging import Logger as GunicornLogger

from gateway.trace import redact_url

# What a request id may be: taken from X-Request-Id only if it fits, and the only thing the log lookup accepts.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
ENVIRON_KEY = "dtgw.request_id"
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamp each record with the current request's id (or '-')."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id() or "-"
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
    # Authlib (the OpenID Connect provider) logs the tokens it issues at DEBUG: never, whatever the root level.
    authlib = logging.getLogger("authlib")
    if authlib.level < logging.INFO:
        authlib.setLevel(logging.INFO)
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


def current_request_id() -> str | None:
    """The id of the request being served, if any."""
    return request.environ.get(ENVIRON_KEY) if has_request_context() else None


class RequestIds:
    """WSGI layer: give each request an id (the caller's X-Request-Id if sane) and echo it on the response.

    A WSGI layer rather than Flask hooks: it reads and writes the environ and header list directly, at a fraction
    of the per-request cost of before/after_request functions, and it stamps every response, errors included.
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        given = environ.get("HTTP_X_REQUEST_ID", "")
        # An id only has to be unique, not unguessable: `random` (reseeded in every forked worker) needs no
        # os.urandom call, which in a threaded worker gives up the GIL on every request.
        request_id = given if given and REQUEST_ID_RE.match(given) else f"{random.getrandbits(128):032x}"
        environ[ENVIRON_KEY] = request_id

        def stamped(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-Id", request_id))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, stamped)  # type: ignore[no-any-return]


class AccessLogger(GunicornLogger):
    """gunicorn's logger, with page-URL query values redacted in access log lines (gunicorn.conf.py uses it).

    The request line and the Referer carry page URLs, and page URLs can carry auth codes, tokens and tickets
    (`/channel/config?url=…%3Fcode%3D…`). They go through the one redaction policy, gateway.trace's.
    """

    # The atoms a log format can name that hold a URL: the Referer, the query, the raw URI (and the request line).
    URL_ATOMS = ("f", "{http_referer}e", "{raw_uri}e", "{referer}i")

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in self.URL_ATOMS:
            value = atoms.get(name)
            if isinstance(value, str):
                atoms[name] = redact_url(value)
        for name in ("q", "{query_string}e"):
            value = atoms.get(name)
            if isinstance(value, str) and value:
                atoms[name] = (redact_url("?" + value) or "?")[1:]
        line = atoms.get("r")
        if isinstance(line, str):  # "GET /path?query HTTP/1.1"
            method, _, rest = line.partition(" ")
            uri, space, protocol = rest.rpartition(" ")
            atoms["r"] = f"{method} {redact_url(uri)}{space}{protocol}" if space else f"{method} {redact_url(rest)}"
        return atoms


def init_app(app: Flask) -> None:
    """Assign each request an id and echo it back."""
    app.wsgi_app = RequestIds(app.wsgi_app)  # type: ignore[method-assign]
