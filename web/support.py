"""The support console's blueprint: the page, login/logout, and the JSON API under /support/api/.

Always registered; without GATEWAY_ADMIN_TOKEN the page shows a disabled notice (404) and the API answers 401
with hint 'console disabled: set GATEWAY_ADMIN_TOKEN'.

Every API error is the contract's envelope, rendered by the app's one error handler: a refused forced refresh,
a self-test run too soon and the admin-token lockout raise `TooManyRequests` (429 rate_limited, Retry-After).
Only the HTML login form renders its own refusal (a human message, same status).

Log lines by request id come from a per-process buffer (support/logbuffer.py): under gunicorn each worker keeps its
own, so a request served by another worker shows no lines here. The log page and /api/logs say so and give the
grep command for the log files, which hold every worker's lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar, cast

from flask import Blueprint, Flask, Response, current_app, g, jsonify, redirect, render_template, request
from flask.blueprints import BlueprintSetupState
from werkzeug.wrappers import Response as BaseResponse

from gateway.errors import InvalidRequest, TooManyRequests, Unauthorized
from gateway.logs import REQUEST_ID_RE
from gateway.validation import UrlRefused, json_object, load, origin_from_header, parse_web_url
from support import identity, logbuffer, pipelines, schemas, signatures, traces
from support.auth import COOKIE, COOKIE_PATH, CSRF_HEADER, Guard, Session, Settings
from support.selftest import self_test
from web.runtime import get_runtime

log = logging.getLogger(__name__)
bp = Blueprint("support", __name__, url_prefix="/support")
EXTENSION = "dtgw.support"
P = ParamSpec("P")
R = TypeVar("R")


@bp.record_once
def _setup(setup: BlueprintSetupState) -> None:
    app = cast(Flask, setup.app)
    settings = Settings.from_settings(get_runtime(app).settings)
    app.extensions[EXTENSION] = Guard(get_runtime(app).store, settings)
    if settings.enabled:
        logbuffer.install()
        if len(settings.admin_token or "") < 16:
            log.warning("GATEWAY_ADMIN_TOKEN is short; use at least 16 random characters")


def guard() -> Guard:
    return current_app.extensions[EXTENSION]


def client_ip() -> str:
    # Behind nginx, ProxyFix (GATEWAY_TRUST_PROXY) has already put the real client address here.
    return request.remote_addr or "unknown"


def _same_origin_post() -> bool:
    """False when a browser says the POST comes from another origin."""
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    try:
        here = parse_web_url(request.host_url).origin
    except UrlRefused:
        return False
    return origin_from_header(origin) == here


def _disabled_notice() -> tuple[str, int]:
    return render_template("support_disabled.html"), 404


def current_session() -> Session | None:
    return guard().session_from_cookie(request.cookies.get(COOKIE))


def require_admin() -> None:
    """Admit a request with the bearer token, or with a session cookie (plus CSRF token on POST)."""
    gd = guard()
    gd.require_enabled()
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be `Bearer <admin token>`")
        gd.check_token(token.strip(), client_ip())
        g.support_auth = "bearer"
        return
    session = current_session()
    if session is None:
        raise Unauthorized(
            "No admin token and no console session",
            hint="Send `Authorization: Bearer <GATEWAY_ADMIN_TOKEN>`, or log in at /support.",
        )
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        if not _same_origin_post() or not gd.csrf_ok(session, request.headers.get(CSRF_HEADER)):
            raise Unauthorized(
                "Missing or wrong CSRF token",
                hint=f"Cookie-authenticated POSTs must send the page's {CSRF_HEADER} header; reload the console.",
            )
    g.support_auth = "cookie"


def admin_only(view: Callable[P, R]) -> Callable[P, R]:
    """Run `view` only for an admitted request (`require_admin`); else the contract's 401, or 429 when locked out."""

    @wraps(view)
    def admitted(*args: P.args, **kwargs: P.kwargs) -> R:
        require_admin()
        return view(*args, **kwargs)

    return admitted


def admin_page(view: Callable[P, Any]) -> Callable[P, Any]:
    """`admin_only` for an HTML page: the disabled notice (404), or the login form (401) when the request
    brings no credentials at all; a wrong token is refused as `admin_only` refuses it."""
    admitted = admin_only(view)

    @wraps(view)
    def page_view(*args: P.args, **kwargs: P.kwargs) -> Any:
        if not guard().settings.enabled:
            return _disabled_notice()
        if current_session() is None and not request.headers.get("Authorization"):
            return render_template("support_login.html", error=None), 401
        return admitted(*args, **kwargs)

    return page_view


@bp.after_request
def _headers(response: Response) -> Response:
    # Console answers hold operational detail: never cached, never framed, no referrer to other sites.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Chrome send Origin: null
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return response


def check_request_id(request_id: str) -> None:
    """Refuse what cannot be a request id (`invalid_request`): the log lookup takes nothing else."""
    if not REQUEST_ID_RE.match(request_id):
        raise InvalidRequest("request_id: not a request id")


def _json_body() -> Any:
    """The request's JSON, or None when it is not JSON (json_object() turns anything but an object into
    invalid_request). Depth bombs and lone surrogates are refused by the app's JSON provider (get_json -> None)."""
    return request.get_json(silent=True) if request.is_json else None


# -- pages -----------------------------------------------------------------------------------------------------
@bp.get("")
@bp.get("/")
def page() -> tuple[str, int]:
    gd = guard()
    if not gd.settings.enabled:
        return _disabled_notice()
    session = current_session()
    if session is None:
        return render_template("support_login.html", error=None), 200
    return render_template("support.html", csrf=session.csrf, corp=request.args.get("corp", "")), 200


@bp.post("/login")
def login() -> Any:
    response: BaseResponse
    gd = guard()
    if not gd.settings.enabled:
        return _disabled_notice()
    if not _same_origin_post():
        return render_template("support_login.html", error="请求来源不符 (cross-origin login refused)"), 403
    try:
        gd.check_token(str(request.form.get("token", "")), client_ip())
    except (Unauthorized, TooManyRequests) as e:
        log.warning("support login refused from %s (%s)", client_ip(), e.status)
        response = Response(
            render_template("support_login.html", error=e.message, retry_after=e.retry_after), status=e.status
        )
        if e.retry_after:
            response.headers["Retry-After"] = str(int(e.retry_after))
        return response
    cookie, _ = gd.open_session()
    log.info("support login from %s", client_ip())
    response = redirect("/support", code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=gd.settings.session_ttl,
        path=COOKIE_PATH,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@bp.post("/logout")
def logout() -> Any:
    session = current_session()
    if session is not None and _same_origin_post() and guard().csrf_ok(session, request.form.get("csrf")):
        guard().close_session(session)
    response = redirect("/support", code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Strict")
    return response


@bp.get("/logs/<request_id>")
@admin_page
def log_page(request_id: str) -> Any:
    check_request_id(request_id)
    return render_template("support_logs.html", **logbuffer.report(request_id))


# -- JSON API --------------------------------------------------------------------------------------------------
@bp.get("/api/corps")
@admin_only
def api_corps() -> Response:
    return jsonify({"corps": traces.corps_overview(get_runtime())})


@bp.get("/api/identity")
@admin_only
def api_identity() -> Response:
    """Signing key ids (current, previous) and the OpenID Connect clients; ?corpid= narrows the clients."""
    return jsonify(identity.identity_overview(get_runtime(), request.args.get("corpid") or None))


@bp.get("/api/corps/<corpid>")
@admin_only
def api_corp(corpid: str) -> Response:
    return jsonify(pipelines.corp_state(get_runtime(), corpid))


@bp.post("/api/corps/<corpid>/refresh/<pipeline>")
@admin_only
def api_refresh(corpid: str, pipeline: str) -> Response:
    """200 with the new state, or 429 rate_limited (Retry-After) while the pipeline's cooldown runs; 400 for a
    pipeline the corp's kind does not have (app_token of a kind-channel corp, channel_ticket of an internal app)."""
    pipelines.check_pipeline(pipeline)  # before the corp: a bad name is 400 whatever the corp
    try:
        result = pipelines.refresh(get_runtime(), corpid, pipeline)
    except TooManyRequests:
        log.info("support refresh corp=%s pipeline=%s refused (cooldown)", corpid, pipeline)
        raise
    log.info("support refresh corp=%s pipeline=%s refreshed", corpid, pipeline)
    return jsonify(result)


@bp.get("/api/corps/<corpid>/trace")
@admin_only
def api_trace(corpid: str) -> Response:
    outcome = request.args.get("outcome") or None
    try:
        count = int(request.args.get("count", "50"))
    except ValueError:
        raise InvalidRequest("count: must be a number") from None
    return jsonify(traces.recent_trace(get_runtime(), corpid, outcome=outcome, count=count))


@bp.get("/api/trace")
@admin_only
def api_trace_search() -> Response:
    """Search every corp's trace: ?q= (reference code, request id, userid or unionid), reference, request_id,
    userid, unionid, outcome, since, until (unix seconds or ISO 8601 with timezone), corpid, count."""
    return jsonify(
        traces.search(
            get_runtime(),
            traces.TraceQuery.from_args(request.args),
            corpid=request.args.get("corpid") or None,
            count=_count(),
        )
    )


def _count() -> int:
    try:
        return int(request.args.get("count", "50"))
    except ValueError:
        raise InvalidRequest("count: must be a number") from None


@bp.post("/api/corps/<corpid>/signature-check")
@admin_only
def api_signature_check(corpid: str) -> Response:
    fields = load(schemas.SIGNATURE_CHECK, json_object(_json_body()))
    return jsonify(
        signatures.check_signature(
            get_runtime(),
            corpid,
            url=fields["url"],
            nonce=fields["nonceStr"],
            timestamp=fields["timeStamp"],
            signature=fields["signature"],
            signed_url=fields["signedUrl"],
            corp_id=fields["corpId"],
            agent_id=fields["agentId"],
        )
    )


@bp.post("/api/corps/<corpid>/self-test")
@admin_only
def api_self_test(corpid: str) -> Response:
    log.info("support self-test corp=%s", corpid)
    return jsonify(self_test(get_runtime(), corpid, pause=guard().settings.selftest_cooldown))


@bp.get("/api/logs/<request_id>")
@admin_only
def api_logs(request_id: str) -> Response:
    check_request_id(request_id)
    return jsonify(logbuffer.report(request_id))
