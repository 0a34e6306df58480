"""A corp's credential pipelines as the console shows them, and the forced refresh: for kind channel the channel
token, corp token and channel ticket; for the current-generation kinds (internal, service-window) the app token and
app ticket.

Nothing returned here carries a secret, token or ticket: credentials appear as fingerprints only.
"""

from __future__ import annotations

import time
from typing import Any

from corp.registry import INTERNAL, Corp
from corp.runtime import Runtime
from gateway.errors import InvalidRequest, TooManyRequests, UnknownCorp
from kit.errors import Failure
from oapi.credentials import APP_PIPELINES, APP_TICKET, APP_TOKEN, CHANNEL_TICKET, CHANNEL_TOKEN, CORP_TOKEN, Credential
from oapi.credentials import PIPELINES as CHANNEL_PIPELINES
from oapi.hints import dingtalk_text
from oapi.metrics import FORCED_REFRESHES
from oapi.tokens import CredentialCache
from support.hints_zh import hint_zh

# What the console calls each pipeline (names and APIs are oapi.credentials.Pipeline's).
_LABELS = {
    CHANNEL_TOKEN: "channel token (corpid + channelSecret)",
    CORP_TOKEN: "corp token (corpid + corpSecret)",
    CHANNEL_TICKET: "channel jsapi ticket (dd.config type 1)",
    APP_TOKEN: "app token (appKey + appSecret, api.dingtalk.com)",
    APP_TICKET: "app jsapi ticket (dd.config type 0)",
}
# name: (label, the upstream API whose backoff holds the pipeline's fetch up)
PIPELINES: dict[str, tuple[str, str]] = {p.name: (_LABELS[p], p.api) for p in (*CHANNEL_PIPELINES, *APP_PIPELINES)}
_APP_NAMES = frozenset(p.name for p in APP_PIPELINES)
IP_BLOCK = "*ip-block*"


def pipelines_of(corp: Corp) -> tuple[str, ...]:
    """The pipelines a registration of the corp's kind has, in the order the console lists them."""
    return tuple(p.name for p in (APP_PIPELINES if corp.current else CHANNEL_PIPELINES))


class RefreshCooldown(TooManyRequests):
    """A forced refresh within the pipeline's cooldown window (shared with page-reported 52013 refreshes)."""

    default_hint = (
        "Each forced refresh invalidates the credential every open page was signed with, so it runs at most once "
        "per corp and pipeline per GATEWAY_TICKET_COOLDOWN. The current value stays valid; wait the seconds in "
        "Retry-After."
    )


def cooldown(rt: Runtime) -> int:
    """GATEWAY_TICKET_COOLDOWN: the window of one forced refresh per corp and pipeline."""
    return rt.settings.ticket_cooldown


def check_pipeline(pipeline: str, corp: Corp | None = None) -> None:
    """Refuse a pipeline name that is not one of PIPELINES, or (given the corp) not one of its kind's
    (`invalid_request`)."""
    if pipeline not in PIPELINES:
        raise InvalidRequest(f"pipeline: must be one of {', '.join(PIPELINES)}")
    if corp is not None and pipeline not in pipelines_of(corp):
        raise InvalidRequest(
            f"pipeline: corp {corp.corpid} is of kind {corp.kind}, whose pipelines are {', '.join(pipelines_of(corp))}"
        )


def cache_for(rt: Runtime, corp: Corp, pipeline: str) -> CredentialCache[Any]:
    """The credential cache behind one pipeline name of the corp's kind."""
    check_pipeline(pipeline, corp)
    if pipeline == CHANNEL_TOKEN.name:
        return rt.channel_client(corp).token
    if pipeline == CORP_TOKEN.name:
        return rt.corp_client(corp).token
    if pipeline == APP_TOKEN.name:
        return rt.app_client(corp).app_token
    if pipeline == APP_TICKET.name:
        return rt.app_client(corp).app_ticket
    return rt.channel_client(corp).ticket


def backoff_scope(corp: Corp, pipeline: str) -> str:
    """The name the pipeline's fetch is held up under: the API for oapi calls, appKey and API for v1.0 ones (whose
    rate limits are per app and API, oapi/openapi.py)."""
    api = PIPELINES[pipeline][1]
    return f"{corp.app_key}:{api}" if pipeline in _APP_NAMES else api


def credential_view(cred: Credential | None, now: float) -> dict[str, Any]:
    """A cached credential as the console shows it: fingerprint and times, never the value."""
    if cred is None:
        return {"cached": False, "fingerprint": None, "fetched_at": None, "expires_at": None, "expires_in": None}
    return {
        "cached": True,
        "fingerprint": cred.fingerprint,
        "fetched_at": round(cred.fetched_at, 3),
        "expires_at": round(cred.expires_at, 3),
        "expires_in": max(0, int(cred.expires_at - now)),
        "generation": cred.generation,
    }


def errcode_view(raw: object) -> int | str | None:
    """An errcode as the console shows it: an oapi int (also when stored as digits), or a v1.0 string code such as
    `invalidClientIdOrSecret` (kept: it is what a person searches DingTalk's documentation for)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()[:100]
    return int(text) if text.lstrip("-").isdigit() else text


def _failure_view(failure: dict[str, object] | None) -> dict[str, Any] | None:
    if not failure:
        return None
    errcode = errcode_view(failure.get("errcode"))
    return {
        "errcode": errcode,
        "errmsg": str(failure.get("errmsg") or "")[:200],
        "hint": hint_zh(errcode) or str(failure.get("hint") or ""),
        "dingtalk": dingtalk_text(errcode),
    }


def pipeline_state(rt: Runtime, corp: Corp, pipeline: str, *, backoff: dict[str, int] | None = None) -> dict[str, Any]:
    """One pipeline: cached or not, when fetched, expiry, fingerprint, remembered failure, backoff, cooldown."""
    cache = cache_for(rt, corp, pipeline)
    now = time.time()
    label, api = PIPELINES[pipeline]
    backoff = rt.upstream.backoff.active(corp.corpid) if backoff is None else backoff
    scope = backoff_scope(corp, pipeline)
    held = {name: secs for name, secs in backoff.items() if name in (scope, IP_BLOCK)}
    return {
        "pipeline": pipeline,
        "label": label,
        "api": api,
        **credential_view(cache.peek(), now),
        "failure": _failure_view(cache.remembered_failure()),
        "backoff": held,
        "cooldown_left": cache.cooldown_left(),
        "cooldown": cooldown(rt),
    }


def corp_state(rt: Runtime, corpid: str) -> dict[str, Any]:
    """A corp's public settings (its kind among them), its kind's pipelines, the real org it maps followers into,
    and every backoff window in force."""
    corp = rt.corp(corpid)
    backoff = rt.upstream.backoff.active(corpid)
    return {
        "corp": corp.public(),
        "map_via": _map_via_view(rt, corp),
        "pipelines": [pipeline_state(rt, corp, name, backoff=backoff) for name in pipelines_of(corp)],
        "backoff": backoff,
        "now": round(time.time(), 3),
    }


def _map_via_view(rt: Runtime, corp: Corp) -> dict[str, Any] | None:
    """Whether a service window's --map-via is what logins need: a registered internal app (else they fail with
    mapping_unavailable)."""
    if not corp.map_via:
        return None
    try:
        via = rt.corp(corp.map_via)
    except UnknownCorp:
        return {"corpid": corp.map_via, "registered": False, "kind": None, "usable": False}
    except Failure:  # registered, but its secrets do not open with this key
        return {"corpid": corp.map_via, "registered": True, "kind": None, "usable": False}
    return {"corpid": via.corpid, "registered": True, "kind": via.kind, "usable": via.kind == INTERNAL}


def refresh(rt: Runtime, corpid: str, pipeline: str) -> dict[str, Any]:
    """Force a refresh and return the new state; raise RefreshCooldown if one was forced within the cooldown."""
    corp = rt.corp(corpid)
    cache = cache_for(rt, corp, pipeline)
    window = cooldown(rt)
    try:
        fresh = cache.force_refresh(window)
    except Failure:
        FORCED_REFRESHES.labels(corpid, cache.pipeline, "console", "error").inc()
        raise
    FORCED_REFRESHES.labels(corpid, cache.pipeline, "console", "cooldown" if fresh is None else "refreshed").inc()
    if fresh is None:
        left = max(1, int(cache.cooldown_left()))
        raise RefreshCooldown(
            f"Refused: a {pipeline} refresh of corp {corpid} was forced less than {window} s ago; "
            f"try again in {left} s",
            retry_after=left,
        )
    state = pipeline_state(rt, corp, pipeline)
    return {"refreshed": True, "message": f"Refreshed: new fingerprint {fresh.fingerprint}.", "state": state}
