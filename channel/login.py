"""Follower login: auth code -> openid/unionid (channel token) -> userid (corp token) -> session token."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from channel.session import issue_token
from corp.links import LinkCache
from corp.runtime import Runtime
from gateway import trace
from gateway.errors import contract_of
from gateway.store import WRITE_REFUSED
from kit.errors import Failure
from oapi.corp import NO_SUCH_USER
from oapi.hints import hint_for

log = logging.getLogger(__name__)


def best_effort(what: str, corpid: str, write: Callable[[], None]) -> None:
    """Run a write that only fills a cache or the support trace; skip it (logged) if Redis refuses writes.

    By then DingTalk has spent the person's auth code: a full or read-only store must not turn a login that has
    everything it needs into an error (issue 15, item 5).
    """
    try:
        write()
    except WRITE_REFUSED as e:
        log.warning("%s for corp=%s not stored: the store refuses writes (%s)", what, corpid, type(e).__name__)


def login(rt: Runtime, corpid: str, code: str, *, request_id: str) -> dict[str, Any]:
    """Sign a follower in; every attempt, good or bad, leaves a trace entry (without the code)."""
    corp = rt.corp(corpid)
    step = "exchange_code"
    entry: dict[str, Any] = {"kind": "login", "request_id": request_id}
    limit = rt.settings.trace_limit
    try:
        follower = rt.channel_client(corp).follower_for_code(code)
        step = "map_userid"
        links = LinkCache(rt.store, corpid, rt.settings.userid_cache_ttl)
        link = links.get(follower.unionid)
        entry["link_cached"] = link is not None
        if link is None:
            link = rt.corp_client(corp).userid_for_unionid(follower.unionid)
            best_effort("userid link", corpid, lambda: links.put(follower.unionid, link))
        step = "done"
        ttl = rt.settings.session_ttl
        token = issue_token(
            rt.session_key,
            corpid=corpid,
            openid=follower.openid,
            unionid=follower.unionid,
            userid=link.userid,
            ttl=ttl,
        )
    except Failure as e:
        entry.update(
            step=step, outcome=contract_of(e)[1], errcodes=[e.errcode] if e.errcode is not None else [], hint=e.hint
        )
        best_effort("login trace", corpid, lambda: trace.record(rt.store, corpid, entry, limit=limit))
        raise
    entry.update(
        step=step,
        outcome="linked" if link.linked else "not_linked",
        errcodes=[] if link.linked else [NO_SUCH_USER],
        hint=None if link.linked else hint_for(NO_SUCH_USER),
        userid=link.userid,
        unionid=follower.unionid,
        contact_type=link.contact_type,
    )
    best_effort("login trace", corpid, lambda: trace.record(rt.store, corpid, entry, limit=limit))
    return {
        "corpid": corpid,
        "openid": follower.openid,
        "unionid": follower.unionid,
        "userid": link.userid,
        "contact_type": link.contact_type,
        "linked": link.linked,
        "token": token,
        "expires_in": ttl,
    }
