"""Follower login: auth code -> openid/unionid (channel token) -> userid (corp token) -> session token."""

from __future__ import annotations

from typing import Any

from channel.links import LinkCache
from channel.session import issue_token
from gateway import trace
from gateway.errors import GatewayError
from gateway.runtime import Runtime
from oapi.hints import hint_for


def login(rt: Runtime, corpid: str, code: str, *, request_id: str) -> dict[str, Any]:
    """Sign a follower in; every attempt, good or bad, leaves a trace entry (without the code)."""
    corp = rt.corp(corpid)
    step = "exchange_code"
    entry: dict[str, Any] = {"kind": "login", "request_id": request_id}
    try:
        follower = rt.channel_client(corp).follower_for_code(code)
        step = "map_userid"
        links = LinkCache(rt.store, corpid, int(rt.config["GATEWAY_USERID_CACHE_TTL"]))
        link = links.get(follower.unionid)
        entry["link_cached"] = link is not None
        if link is None:
            link = rt.corp_client(corp).userid_for_unionid(follower.unionid)
            links.put(follower.unionid, link)
        step = "done"
        ttl = int(rt.config["GATEWAY_SESSION_TTL"])
        token = issue_token(
            rt.session_key,
            corpid=corpid,
            openid=follower.openid,
            unionid=follower.unionid,
            userid=link.userid,
            ttl=ttl,
        )
    except GatewayError as e:
        entry.update(step=step, outcome=e.code, errcodes=[e.errcode] if e.errcode is not None else [], hint=e.hint)
        trace.record(rt.store, corpid, entry, limit=int(rt.config["GATEWAY_TRACE_LIMIT"]))
        raise
    entry.update(
        step=step,
        outcome="linked" if link.linked else "not_linked",
        errcodes=[] if link.linked else [60121],
        hint=None if link.linked else hint_for(60121),
        userid=link.userid,
        unionid=follower.unionid,
        contact_type=link.contact_type,
    )
    trace.record(rt.store, corpid, entry, limit=int(rt.config["GATEWAY_TRACE_LIMIT"]))
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
