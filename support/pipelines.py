"""A corp's three credential pipelines as the console shows them, and the forced refresh.

Nothing returned here carries a secret, token or ticket: credentials appear as fingerprints only.
"""

from __future__ import annotations

import time
from typing import Any

from corp.registry import Corp
from corp.runtime import Runtime
from gateway.errors import InvalidRequest, TooManyRequests
from oapi.credentials import CHANNEL_TICKET, CHANNEL_TOKEN, CORP_TOKEN, Credential
from oapi.credentials import PIPELINES as ALL_PIPELINES
from oapi.hints import hint_for
from oapi.tokens import CredentialCache

# What the console calls each pipeline (names and APIs are oapi.tokens.PIPELINES').
_LABELS = {
    CHANNEL_TOKEN: "channel token (corpid + channelSecret)",
    CORP_TOKEN: "corp token (corpid + corpSecret)",
    CHANNEL_TICKET: "channel jsapi ticket (dd.config type 1)",
}
# name: (label, the upstream API whose backoff holds the pipeline's fetch up)
PIPELINES: dict[str, tuple[str, str]] = {p.name: (_LABELS[p], p.api) for p in ALL_PIPELINES}
IP_BLOCK = "*ip-block*"


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


def check_pipeline(pipeline: str) -> None:
    """Refuse a pipeline name that is not one of PIPELINES (`invalid_request`)."""
    if pipeline not in PIPELINES:
        raise InvalidRequest(f"pipeline: must be one of {', '.join(PIPELINES)}")


def cache_for(rt: Runtime, corp: Corp, pipeline: str) -> CredentialCache[Any]:
    """The credential cache behind one pipeline name."""
    check_pipeline(pipeline)
    if pipeline == CHANNEL_TOKEN.name:
        return rt.channel_client(corp).token
    if pipeline == CORP_TOKEN.name:
        return rt.corp_client(corp).token
    return rt.channel_client(corp).ticket


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


def _failure_view(failure: dict[str, object] | None) -> dict[str, Any] | None:
    if not failure:
        return None
    raw = failure.get("errcode")
    errcode = int(raw) if isinstance(raw, int | str) and str(raw).lstrip("-").isdigit() else None
    return {
        "errcode": errcode,
        "errmsg": str(failure.get("errmsg") or "")[:200],
        "hint": str(failure.get("hint") or "") or hint_for(errcode),
    }


def pipeline_state(rt: Runtime, corp: Corp, pipeline: str, *, backoff: dict[str, int] | None = None) -> dict[str, Any]:
    """One pipeline: cached or not, when fetched, expiry, fingerprint, remembered failure, backoff, cooldown."""
    cache = cache_for(rt, corp, pipeline)
    now = time.time()
    label, api = PIPELINES[pipeline]
    backoff = rt.upstream.backoff.active(corp.corpid) if backoff is None else backoff
    held = {name: secs for name, secs in backoff.items() if name in (api, IP_BLOCK)}
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
    """A corp's public settings, its three pipelines and every backoff window in force."""
    corp = rt.corp(corpid)
    backoff = rt.upstream.backoff.active(corpid)
    return {
        "corp": corp.public(),
        "pipelines": [pipeline_state(rt, corp, name, backoff=backoff) for name in PIPELINES],
        "backoff": backoff,
        "now": round(time.time(), 3),
    }


def refresh(rt: Runtime, corpid: str, pipeline: str) -> dict[str, Any]:
    """Force a refresh and return the new state; raise RefreshCooldown if one was forced within the cooldown."""
    corp = rt.corp(corpid)
    cache = cache_for(rt, corp, pipeline)
    window = cooldown(rt)
    fresh = cache.force_refresh(window)
    if fresh is None:
        left = max(1, int(cache.cooldown_left()))
        raise RefreshCooldown(
            f"Refused: a {pipeline} refresh of corp {corpid} was forced less than {window} s ago; "
            f"try again in {left} s",
            retry_after=left,
        )
    state = pipeline_state(rt, corp, pipeline)
    return {"refreshed": True, "message": f"Refreshed: new fingerprint {fresh.fingerprint}.", "state": state}
