"""Build the signed dd.config (type 1) for a service-window page, and handle page-reported config errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channel.signing import new_nonce, normalize_url, sign, timestamp_ms
from gateway import trace
from gateway.errors import AgentMismatch, InvalidRequest, UrlNotAllowed
from gateway.runtime import Runtime
from oapi.hints import hint_for

# Codes after which the page's ticket is likely stale or from another app (dingtalk-oapi.md §4).
TICKET_ERRORS = frozenset({52011, 52013})


def check_page_url(url: str) -> None:
    """Reject anything that is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as e:
        raise InvalidRequest(f"url: not a valid URL ({e})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("url: must be an absolute http(s) URL", hint="Pass url=location.href from the page.")


def signed_config(rt: Runtime, corpid: str, agentid: str, url: str) -> dict[str, Any]:
    """The dd.config for `url`, signed with the corp's current channel ticket."""
    corp = rt.corp(corpid)
    if agentid != corp.agent_id:
        raise AgentMismatch(f"agentid {agentid} is not the one registered for corp {corpid}")
    check_page_url(url)
    if not corp.allows(url):
        raise UrlNotAllowed(
            f"{urlsplit(url).scheme}://{urlsplit(url).netloc.rpartition('@')[2]} is not a registered origin of "
            f"corp {corpid}"
        )
    signed_url = normalize_url(url)
    ticket = rt.channel_client(corp).ticket.get()
    nonce, stamp = new_nonce(), timestamp_ms()
    return {
        "corpId": corp.corpid,
        "agentId": corp.agent_id,
        "timeStamp": stamp,
        "nonceStr": nonce,
        "signature": sign(ticket.value, nonce, stamp, signed_url, corp.sign_hash),
        "type": 1,
        "url": signed_url,
    }


def report_config_error(
    rt: Runtime,
    *,
    corpid: str,
    agentid: str | None,
    url: str | None,
    error_code: int,
    error_message: str,
    request_id: str,
) -> dict[str, Any]:
    """Record a dd.error from a page; for ticket errors, refresh the ticket at most once per cooldown."""
    corp = rt.corp(corpid)
    refreshed = False
    # Only a report that could come from one of this corp's own pages may spend the refresh; the endpoint is
    # public, so the cooldown is what bounds a flood of made-up reports.
    plausible = agentid == corp.agent_id and bool(url) and corp.allows(url or "")
    if error_code in TICKET_ERRORS and plausible:
        fresh = rt.channel_client(corp).ticket.force_refresh(int(rt.config["GATEWAY_TICKET_COOLDOWN"]))
        refreshed = fresh is not None
    trace.record(
        rt.store,
        corpid,
        {
            "kind": "config_error",
            "step": "dd.config",
            "outcome": "config_error",
            "errcodes": [error_code],
            "hint": hint_for(error_code),
            "message": error_message[:200],
            "url": trace.redact_url(normalize_url(url)) if url else None,
            "agent_ok": agentid == corp.agent_id if agentid else None,
            "ticket_refreshed": refreshed,
            "request_id": request_id,
        },
        limit=int(rt.config["GATEWAY_TRACE_LIMIT"]),
    )
    return {"accepted": True, "ticket_refreshed": refreshed, "hint": hint_for(error_code)}
