"""The channel blueprint: thin views over channel.config and channel.login, and CORS preflights for corp origins."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request

from channel.config import record_refusal, report_config_error, signed_config
from channel.junk import sign_in
from channel.login import login, login_for_client
from channel.schemas import ConfigErrorBody, ConfigQuery, LoginBody
from gateway.errors import AgentMismatch, InvalidRequest, UnknownCorp, UrlNotAllowed, contract_of
from gateway.logs import current_request_id
from gateway.trace import reference_of
from gateway.validation import AGENT_ID_RE, CORPID_RE, JSON_OBJECT_HINT, json_object, load, parse_query
from web.cors import CORPID_KEY, corp_allows
from web.oidc import complete_authorization
from web.runtime import get_runtime, issuer

bp = Blueprint("channel", __name__, url_prefix="/channel")

# Built once: a marshmallow Schema is reusable across requests and threads, and building one per request
# (field deep copies) costs more than the validation itself.
CONFIG_QUERY = ConfigQuery()
LOGIN_BODY = LoginBody()
CONFIG_ERROR_BODY = ConfigErrorBody()


def json_body() -> Any:
    """The request's JSON body, or `invalid_request` saying what is wrong with it."""
    if not request.is_json:
        raise InvalidRequest("The body must be JSON", hint=JSON_OBJECT_HINT)
    return json_object(request.get_json(silent=True), hint='Send a JSON object, e.g. {"corpid": …}.')


@bp.route("/config", methods=["OPTIONS"])
@bp.route("/login", methods=["OPTIONS"])
@bp.route("/config/error", methods=["OPTIONS"])
def preflight() -> Response:
    """Answer CORS preflights for any origin some corp registered (the body names the corp later)."""
    response = Response(status=204)
    origin = request.headers.get("Origin")
    rt = get_runtime()
    corpid = request.args.get("corpid")
    # A preflight carries no body, so the corp is known only from the query; otherwise any registered corp's
    # origin may proceed to the real request, which is then checked against its own corp.
    candidates = [corpid] if corpid else rt.registry.corpids()
    if origin and any(corp_allows(c, origin) for c in candidates):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    response.vary.add("Origin")
    return response


# A page's every view sends the same query string, so it is parsed and validated once per distinct string
# (LRU-bounded; a query that fails raises and is not kept). Parsing it into `request.args` and validating it
# were over a third of the endpoint's own cost.
@lru_cache(maxsize=512)
def config_query(query_string: str) -> tuple[str, str, str | None]:
    """corpid, agentid and url from a config request's raw query string, validated."""
    args = load(CONFIG_QUERY, parse_query(query_string))
    return args["corpid"], args["agentid"], args["url"]


@bp.get("/config")
def config() -> Response:
    environ = request.environ
    try:
        corpid, agentid, url = config_query(environ.get("QUERY_STRING", ""))
        environ[CORPID_KEY] = corpid
        url = url or environ.get("HTTP_REFERER")
        if not url:
            raise InvalidRequest(
                "url: missing, and no Referer header", hint="Pass url=location.href (without the #fragment)."
            )
        return jsonify(signed_config(get_runtime(), corpid, agentid, url))
    except (InvalidRequest, UnknownCorp, AgentMismatch, UrlNotAllowed) as e:
        # The page shows this refusal with its reference code: trace it, so the code leads somewhere.
        _trace_refusal("config", contract_of(e)[1], request.args.get("corpid", ""), request.args.get("agentid"))
        raise


def _trace_refusal(step: str, outcome: str, corpid: str, agentid: str | None) -> None:
    record_refusal(
        get_runtime(),
        corpid,
        {
            "step": step,
            "outcome": outcome,
            "request_id": current_request_id() or "",
            "corpid": corpid[:64],
            "agentid": (agentid or "")[:20],
        },
    )


@bp.post("/login")
def login_view() -> Response:
    body = load(LOGIN_BODY, json_body())
    request.environ[CORPID_KEY] = body["corpid"]
    rt, request_id = get_runtime(), current_request_id() or ""
    corpid, code, handle = body["corpid"], body["code"], body["oauth"]

    def attempt(address: str) -> dict[str, Any]:
        if handle:  # an OpenID Connect client's sign-in: its redirect URI with a code, instead of a token
            return login_for_client(
                rt, corpid, code, handle, request_id=request_id, authorize=complete_authorization, client=address
            )
        return login(rt, corpid, code, request_id=request_id, issuer=issuer(), client=address)

    # Within the failed-login budgets of the client's address (behind nginx, the real one) and the corp.
    return jsonify(sign_in(rt, corpid, client=request.remote_addr or "", request_id=request_id, attempt=attempt))


@bp.post("/config/error")
def config_error() -> tuple[Response, int]:
    body = load(CONFIG_ERROR_BODY, json_body())
    request.environ[CORPID_KEY] = body["corpid"]
    result = report_config_error(
        get_runtime(),
        corpid=body["corpid"],
        agentid=body["agentid"],
        url=body["url"],
        error_code=body["errorCode"],
        error_message=body["errorMessage"],
        request_id=current_request_id() or "",
        checked={name: body[name] for name in CHECKED_FIELDS},
        stage=body["stage"],
    )
    return jsonify(result), 202


CHECKED_FIELDS = ("signedUrl", "nonceStr", "timeStamp", "signature", "corpId", "agentId", "type")


@bp.get("/login")
def page() -> tuple[str, int]:
    """The H5 page that signs a person in inside DingTalk (and in a plain browser in sandbox mode), for the corp's
    kind of login app: the legacy window's follower flow, or dd.requestAuthCode with the app's clientId.

    A link that cannot work (parameters missing, corp unknown, wrong agent) gets a friendly page, not JSON.
    """
    rt = get_runtime()
    try:
        args = parse_query(request.environ.get("QUERY_STRING", ""))
    except InvalidRequest:
        args = {}  # mangled beyond reading (not UTF-8): the same page as a link with parameters missing
    corpid = args.get("corpid", "")
    agentid = args.get("agentid", "")
    problem, status, landing_url, kind, client_id = None, 200, None, "", ""
    if not corpid or not agentid:
        problem, status = "missing", 400
    elif not CORPID_RE.match(corpid) or not AGENT_ID_RE.match(agentid):
        problem, status = "malformed", 400  # `agentid=abc` is a broken link, not another app's id
    else:
        try:
            corp = rt.corp(corpid)
        except UnknownCorp:
            problem, status = "unknown_corp", 404
        else:
            landing_url, kind = corp.landing_url, corp.kind
            # The appKey is the clientId the browser sends to dd.requestAuthCode: public by design, not a secret.
            client_id = corp.app_key if corp.current else ""
            if agentid != corp.agent_id:
                problem, status = "agent_mismatch", 400
    request_id = current_request_id() or ""
    if problem:
        _trace_refusal("page", problem, corpid, agentid)
    html = render_template(
        "channel_login.html",
        reference=reference_of(request_id) if problem else None,
        corpid=corpid,
        agentid=agentid,
        kind=kind,
        client_id=client_id,
        sandbox=rt.settings.sandbox,
        problem=problem,
        landing_url=landing_url,
    )
    return html, status
