"""Build the signed dd.config for a page of a corp's login app, and handle page-reported config errors.

Kind channel signs `type: 1` with the channel ticket; kinds service-window and internal sign with the app's own
JSAPI ticket (`type: 0`; a service window's type is a setting, dingtalk-oapi.md §7.2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from corp.registry import CHANNEL, SERVICE_WINDOW, Corp
from corp.runtime import Runtime
from gateway import trace
from gateway.errors import AgentMismatch, InvalidRequest, UnknownCorp, UrlNotAllowed, contract_of
from gateway.store import WRITE_REFUSED
from gateway.validation import Origin, page_origin
from oapi.errors import UpstreamError, UpstreamUnavailable
from oapi.hints import hint_for
from oapi.signing import normalize_url, sign_config

log = logging.getLogger(__name__)

# Codes after which the page's ticket is likely stale or from another app (dingtalk-oapi.md §4).
TICKET_ERRORS = frozenset({52011, 52013})


@dataclass(frozen=True)
class PageUrl:
    """A page URL, checked: the URL to sign and the origin it must belong to."""

    signed: str
    origin: Origin


# Every view of a page asks to sign the same URL, so checking and normalising it is done once per distinct URL
# (LRU-bounded; a URL that fails the check raises and is not kept).
@lru_cache(maxsize=1024)
def page_url(url: str) -> PageUrl:
    """Check that `url` is an absolute http(s) URL that a browser reads as we do, and work out what to sign."""
    return PageUrl(signed=normalize_url(url), origin=page_origin(url))


def _from_corp_page(corp: Corp, agentid: str | None, url: str | None) -> bool:
    """True when a report could come from one of the corp's own pages (right agent, URL under its origins)."""
    if agentid != corp.agent_id or not url:
        return False
    try:
        return corp.allows_origin(page_url(url).origin)
    except InvalidRequest:
        return False


def signed_config(rt: Runtime, corpid: str, agentid: str, url: str) -> dict[str, Any]:
    """The dd.config for `url`, signed with the corp's current channel ticket."""
    corp = rt.corp(corpid)
    if agentid != corp.agent_id:
        raise AgentMismatch(f"agentid {agentid} is not the one registered for corp {corpid}")
    page = page_url(url)
    if not corp.allows_origin(page.origin):
        scheme, host, port = page.origin
        raise UrlNotAllowed(f"{scheme}://{host}:{port} is not a registered origin of corp {corpid}")
    if corp.kind == CHANNEL:
        ticket, config_type = rt.channel_client(corp).ticket.get().value, 1
    else:
        ticket, config_type = rt.app_client(corp).app_ticket.get().value, config_type_of(rt, corp)
    return sign_config(
        corpid=corp.corpid,
        agent_id=corp.agent_id,
        ticket=ticket,
        url=page.signed,
        algorithm=corp.sign_hash,
        config_type=config_type,
    )


def config_type_of(rt: Runtime, corp: Corp) -> int:
    """The dd.config `type` of the corp's pages."""
    if corp.kind == CHANNEL:
        return 1
    if corp.kind == SERVICE_WINDOW:
        return rt.settings.service_window_config_type
    return 0


def report_config_error(
    rt: Runtime,
    *,
    corpid: str,
    agentid: str | None,
    url: str | None,
    error_code: int,
    error_message: str,
    request_id: str,
    checked: dict[str, Any] | None = None,
    stage: str = "dd.config",
) -> dict[str, Any]:
    """Record a dd.error from a page; for ticket errors, refresh the ticket at most once per cooldown.

    `checked`: what the page passed to dd.config (nonceStr, timeStamp, signature, corpId, agentId, type) and the
    URL the gateway signed for it (signedUrl), kept in the entry so the console's checker opens prefilled.
    """
    corp = rt.corp(corpid)
    refreshed = False
    checked = checked or {}
    # Only a report that could come from one of this corp's own pages may spend the refresh; the endpoint is
    # public, so the cooldown is what bounds a flood of made-up reports.
    plausible = _from_corp_page(corp, agentid, url)
    if error_code in TICKET_ERRORS and plausible and stage == "dd.config":
        ticket = rt.channel_client(corp).ticket if corp.kind == CHANNEL else rt.app_client(corp).app_ticket
        try:
            fresh = ticket.force_refresh(rt.settings.ticket_cooldown)
        except (UpstreamError, UpstreamUnavailable) as e:
            # The report is still recorded; the failed refresh dropped the ticket and released its cooldown, so
            # the next page view fetches a new one and the next report may refresh again.
            log.warning("forced ticket refresh corp=%s failed: %s", corpid, contract_of(e)[1])
        else:
            refreshed = fresh is not None
    trace.record(
        rt.store,
        corpid,
        {
            "kind": "config_error",
            "step": stage,
            "outcome": "config_error",
            "errcodes": [error_code],
            "hint": hint_for(error_code),
            "message": trace.redact_text(error_message)[:200],
            "url": trace.redact_url(normalize_url(url)) if url else None,
            "agent_ok": agentid == corp.agent_id if agentid else None,
            "ticket_refreshed": refreshed,
            "request_id": request_id,
            "check": _checked_view(url, checked),
        },
        limit=rt.settings.trace_limit,
    )
    return {
        "accepted": True,
        "ticket_refreshed": refreshed,
        "hint": hint_for(error_code),
        "reference": trace.reference_of(request_id),
    }


def _checked_view(url: str | None, checked: dict[str, Any]) -> dict[str, Any] | None:
    """What DingTalk checked, as the trace keeps it (URLs through the one redaction policy), or None."""
    if not any(checked.get(name) is not None for name in ("nonceStr", "timeStamp", "signature")):
        return None
    view: dict[str, Any] = {"url": trace.redact_url(url.split("#")[0]) if url else None}
    if checked.get("signedUrl"):
        view["signedUrl"] = trace.redact_url(str(checked["signedUrl"]))
    for name in ("nonceStr", "timeStamp", "signature", "corpId", "agentId", "type"):
        if checked.get(name) is not None:
            view[name] = checked[name]
    return view


def record_refusal(rt: Runtime, corpid: str, entry: dict[str, Any]) -> None:
    """Trace a page view or config request refused before any sign-in (a link that cannot work), so its
    reference code leads somewhere. A corpid nobody registered goes to the one shared list (no key per typo)."""
    try:
        rt.corp(corpid)
    except (UnknownCorp, InvalidRequest):
        corpid = trace.UNREGISTERED
    try:
        trace.record(rt.store, corpid, {"kind": "page", **entry}, limit=rt.settings.trace_limit)
    except WRITE_REFUSED as e:  # the trace is best effort: the person still gets the page
        log.warning("page trace for corp=%s not stored (%s)", corpid, type(e).__name__)
