"""CORS for the channel API: every answer varies with Origin, and only the corp's own origins are granted.

A WSGI layer, like `gateway.logs.RequestIds`: it edits the response's raw header list as the response starts.
Doing the same through Flask's after_request and werkzeug's `Headers` cost about 7% of a whole /channel/config
request (docs/benchmarks.md), and every page view pays it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import redis
from flask import Flask

from corp.runtime import Runtime
from gateway.validation import origin_from_header
from kit.errors import Failure
from web.runtime import get_runtime

log = logging.getLogger(__name__)

PREFIX = "/channel/"
# The corp a request is for, when a view learned it from the body (login, config error) or from a validated
# query: the grant is checked against that corp's origins.
CORPID_KEY = "dtgw.corpid"
ALLOW_ORIGIN = "Access-Control-Allow-Origin"


def add_vary_origin(headers: list[tuple[str, str]]) -> None:
    """Make the header list say `Vary: Origin`, extending a Vary the view set rather than replacing it."""
    for i, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            if "origin" not in (v.strip().lower() for v in value.split(",")):
                headers[i] = (name, f"{value}, Origin")
            return
    headers.append(("Vary", "Origin"))


def request_corpid(environ: dict[str, Any]) -> str | None:
    """The corp a channel request names: what a view recorded, else the raw `corpid` query parameter."""
    corpid = environ.get(CORPID_KEY)
    if corpid:
        return str(corpid)
    # An error before validation (a bad query, say) still answers its corp's pages, so they can read the hint.
    # keep_blank_values: the first value decides, as in request.args (`corpid=&corpid=X` names no corp).
    values = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, errors="replace").get("corpid")
    return values[0] if values else None


def corp_allows(corpid: str, origin: str, rt: Runtime | None = None) -> bool:
    """True when `origin` is exactly a serialised origin (as browsers send it) and one of the corp's registered
    origins; False for anything else, an unknown corp or a store outage. The caller echoes `origin` verbatim."""
    parsed = origin_from_header(origin)
    if parsed is None:
        return False
    try:
        return (rt or get_runtime()).corp(corpid).allows_origin(parsed)
    except (Failure, redis.exceptions.RedisError):
        # No grant; the response (often the error itself) stands.
        return False


class ChannelCors:
    """WSGI layer: `Vary: Origin` on every /channel/ answer; `Access-Control-Allow-Origin` for a corp's origins.

    `allows(corpid, origin)` decides a grant (if it raises: no grant). Preflights are answered by the view, which
    sets its own grant; this layer then adds nothing but Vary. Routing errors under /channel/ (404, 405) are
    answered like any other channel answer.
    """

    def __init__(self, wsgi_app: Any, allows: Callable[[str, str], bool]) -> None:
        self.wsgi_app = wsgi_app
        self.allows = allows

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").startswith(PREFIX):
            return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]

        def with_cors(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            add_vary_origin(headers)
            origin = environ.get("HTTP_ORIGIN")
            # Same-origin requests carry no Origin: nothing to grant, and nothing to look up.
            if origin and not any(name.lower() == "access-control-allow-origin" for name, _ in headers):
                if self._granted(environ, origin):
                    headers.append((ALLOW_ORIGIN, origin))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, with_cors)  # type: ignore[no-any-return]

    def _granted(self, environ: dict[str, Any], origin: str) -> bool:
        corpid = request_corpid(environ)
        if not corpid:
            return False
        try:
            return self.allows(corpid, origin)
        except Exception:
            # This runs as the response starts, outside Flask's error handlers: a failure here (an unreadable
            # corp record, say) would replace the answer with the server's bare 500. No grant, and the answer
            # (often the error about that very corp) stands.
            log.exception("CORS grant check failed; answering without a grant")
            return False


def init_app(app: Flask) -> None:
    """Answer CORS for the channel API (after the runtime is built)."""
    app.wsgi_app = ChannelCors(  # type: ignore[method-assign]
        app.wsgi_app, lambda corpid, origin: corp_allows(corpid, origin, get_runtime(app))
    )
