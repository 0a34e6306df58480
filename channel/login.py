"""Login per kind of login app (gateway-contract.md `/channel/login`): an auth code -> who the person is in the
corp's terms -> a session token, or, for an OpenID Connect client (`oauth` handle), the client's redirect URI with
an authorization code.

- channel: code -> openid/unionid (channel token) -> userid (corp token);
- internal: code -> the employee's userid (app token);
- service-window: code -> the follower in the virtual org (app token) [-> follow status] [-> the real org's userid].
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channel.session import issue_token, session_claims
from corp.follows import FollowCache
from corp.links import LinkCache
from corp.registry import CHANNEL, INTERNAL, SERVICE_WINDOW, Corp
from corp.runtime import Runtime
from gateway import trace
from gateway.errors import InvalidRequest, MappingUnavailable, NotFollowing, UnknownCorp, contract_of
from gateway.store import WRITE_REFUSED
from identity.authorizations import PendingAuthorization, fingerprint
from kit.errors import Failure
from oapi.corp import NO_SUCH_USER, UserLink
from oapi.errors import CodeInvalid
from oapi.hints import hint_for
from oapi.tokens import fetched_meanwhile

log = logging.getLogger(__name__)
# Completes an OpenID Connect authorization once the person is known (web/oidc.py, with the protocol library):
# the pending request and the person's session claims -> the URI the page navigates to.
Authorize = Callable[[PendingAuthorization, dict[str, Any]], str]
HANDLE_HINT = (
    "Start the sign-in again from the application: its sign-in link (/oauth/authorize) makes a new one. A handle "
    "serves one sign-in and lives 10 minutes."
)
EMPLOYEE = 0  # contact_type of an internal app's person (the contract: `contact_type` 0)


def best_effort(what: str, corpid: str, write: Callable[[], None]) -> None:
    """Run a write that only fills a cache or the support trace; skip it (logged) if Redis refuses writes.

    By then DingTalk has spent the person's auth code: a full or read-only store must not turn a login that has
    everything it needs into an error (issue 15, item 5).
    """
    try:
        write()
    except WRITE_REFUSED as e:
        log.warning("%s for corp=%s not stored: the store refuses writes (%s)", what, corpid, type(e).__name__)


@dataclass(frozen=True)
class Person:
    """Who signed in, in every kind's terms (gateway-contract.md `/channel/login`)."""

    unionid: str
    link: UserLink
    openid: str | None = None  # kind channel only
    follower_id: str | None = None  # kind service-window only: the follower's userid in the virtual org


def login(rt: Runtime, corpid: str, code: str, *, request_id: str, issuer: str, client: str = "") -> dict[str, Any]:
    """Sign a person in and hand them a session token (gateway-contract.md `/channel/login`)."""
    person = identify(rt, corpid, code, request_id=request_id, client=client)
    ttl = rt.settings.session_ttl
    token = issue_token(rt.keys, session_claims(**person), issuer=issuer, ttl=ttl)
    return {**person, "linked": person["userid"] is not None, "token": token, "expires_in": ttl}


def login_for_client(
    rt: Runtime, corpid: str, code: str, handle: str, *, request_id: str, authorize: Authorize, client: str = ""
) -> dict[str, Any]:
    """Sign a person in for an OpenID Connect client: the contract's person fields and `redirect`, the client's
    redirect URI with an authorization code (instead of a session token).

    The handle is checked before the auth code is spent, and used up (atomically) only once the person is known:
    a login that fails (a stale auth code the page replaces, DingTalk down) leaves it for the next try.
    """
    pending = rt.authorizations.peek(handle)
    if pending is None:
        raise InvalidRequest("oauth: the handle is unknown, used or expired", hint=HANDLE_HINT)
    if pending.corpid != corpid:
        raise InvalidRequest(
            f"oauth: the handle is for another corp than {corpid}",
            hint="Open the sign-in page with the link /oauth/authorize redirected to, unchanged.",
        )
    person = identify(rt, corpid, code, request_id=request_id, client=client)
    taken = rt.authorizations.take(handle)
    if taken is None:  # another tab with the same link got there first, or it expired meanwhile
        raise InvalidRequest("oauth: the handle was used or expired meanwhile", hint=HANDLE_HINT)
    redirect = authorize(taken, session_claims(**person))
    log.info("corp=%s authorized client=%s (handle %s)", corpid, taken.client_id, fingerprint(handle)[:12])
    return {**person, "linked": person["userid"] is not None, "redirect": redirect}


def identify(rt: Runtime, corpid: str, code: str, *, request_id: str, client: str = "") -> dict[str, Any]:
    """Find out who an auth code belongs to, with the corp's login app, whatever its kind: the contract's person
    fields (corpid, kind, openid, unionid, follower_id, userid, contact_type). Every attempt, good or bad, leaves
    a trace entry (without the code); one with a code DingTalk does not know is counted in the window's junk entry
    for its `client` address instead (gateway/trace.py; the failed-login budget is channel/junk.py's)."""
    corp = rt.corp(corpid)
    entry: dict[str, Any] = {"kind": "login", "app_kind": corp.kind, "request_id": request_id}
    steps = _Steps()
    limit = rt.settings.trace_limit
    try:
        if corp.kind == CHANNEL:
            person = _legacy_window(rt, corp, code, steps, entry)
        elif corp.kind == SERVICE_WINDOW:
            person = _service_window(rt, corp, code, steps, entry)
        else:
            person = _employee(rt, corp, code, steps)
        steps.at = "done"
        link = person.link
    except Failure as e:
        entry.update(
            step=steps.at,
            outcome=contract_of(e)[1],
            errcodes=[e.errcode] if e.errcode is not None else [],
            hint=e.hint,
        )
        if isinstance(e, CodeInvalid):
            errcode = e.errcode if isinstance(e.errcode, int) else None
            best_effort("login trace", corpid, lambda: _count_junk(rt, corpid, client, request_id, errcode))
        else:
            best_effort("login trace", corpid, lambda: trace.record(rt.store, corpid, entry, limit=limit))
        raise
    unlinked = not link.linked and (corp.kind == CHANNEL or corp.map_via)
    entry.update(
        step=steps.at,
        outcome="linked" if link.linked else "not_linked",
        errcodes=[NO_SUCH_USER] if unlinked else [],
        hint=_unlinked_hint(corp) if not link.linked else None,
        userid=link.userid,
        unionid=person.unionid,
        follower_id=person.follower_id,
        contact_type=link.contact_type,
    )
    best_effort("login trace", corpid, lambda: trace.record(rt.store, corpid, entry, limit=limit))
    return {
        "corpid": corpid,
        "kind": corp.kind,
        "openid": person.openid,
        "unionid": person.unionid,
        "follower_id": person.follower_id,
        "userid": link.userid,
        "contact_type": link.contact_type,
    }


def _count_junk(rt: Runtime, corpid: str, client: str, request_id: str, errcode: int | None) -> None:
    window = rt.settings.junk_window
    trace.record_junk(rt.store, corpid, client, window=window, request_id=request_id, errcode=errcode)


class _Steps:
    """Where a login is, for the trace entry of a failure."""

    at = "exchange_code"


def _unlinked_hint(corp: Corp) -> str:
    if corp.kind == SERVICE_WINDOW and not corp.map_via:
        return (
            "This service window maps followers to no real org: register it with --map-via REALCORPID to give "
            "followers the real org's userid."
        )
    return hint_for(NO_SUCH_USER)


def _legacy_window(rt: Runtime, corp: Corp, code: str, steps: _Steps, entry: dict[str, Any]) -> Person:
    """Kind channel: code -> openid/unionid (channel token) -> userid (corp token), the link cached.

    The corp token does not depend on the code: on a cold start it is fetched while the code is exchanged, so
    the login waits for three upstream calls in a row, not four. A failure of that fetch is met only if the userid
    lookup needs the token, at that step, as before.
    """
    corp_client = rt.corp_client(corp)
    with fetched_meanwhile(corp_client.token) as corp_token:
        follower = rt.channel_client(corp).follower_for_code(code)
    steps.at = "map_userid"
    link = _cached_link(rt, corp.corpid, follower.unionid, entry, corp_token.then(corp_client.userid_for_unionid))
    return Person(unionid=follower.unionid, link=link, openid=follower.openid)


def _employee(rt: Runtime, corp: Corp, code: str, steps: _Steps) -> Person:
    """Kind internal: code -> the employee's userid (app token); one upstream call, nothing to map."""
    user = rt.app_client(corp).user_for_code(code)
    return Person(unionid=user.unionid, link=UserLink(user.userid, EMPLOYEE))


def _service_window(rt: Runtime, corp: Corp, code: str, steps: _Steps, entry: dict[str, Any]) -> Person:
    """Kind service-window: code -> the follower in the virtual org (app token); then, with --require-follow, the
    follow status (cached); with --map-via, the real org's userid (that org's app token; the link cached)."""
    user = rt.app_client(corp).user_for_code(code)
    if corp.require_follow:
        steps.at = "follow_status"
        follows = FollowCache(rt.store, corp.corpid, rt.settings.follow_cache_ttl)
        followed = follows.get(user.userid)
        entry["follow_cached"] = followed is not None
        if followed is None:
            followed = rt.app_client(corp).follows(user.userid)
            best_effort("follow status", corp.corpid, lambda: follows.put(user.userid, followed))
        if not followed:
            entry["follower_id"] = user.userid
            raise NotFollowing(f"{user.userid} does not follow the service window of {corp.corpid}")
    person = Person(unionid=user.unionid, link=UserLink(None, None), follower_id=user.userid)
    if not corp.map_via:
        return person
    steps.at = "map_userid"
    real = _real_org(rt, corp)
    lookup = user.associated_unionid if corp.map_by == "associated_unionid" else user.unionid
    if not lookup:  # DingTalk gave no such id for this person: nothing to look up, so not linked
        entry["link_cached"] = False
        return person
    link = _cached_link(rt, real.corpid, lookup, entry, rt.app_client(real).userid_for_unionid)
    return Person(unionid=user.unionid, link=link, follower_id=user.userid)


def _real_org(rt: Runtime, corp: Corp) -> Corp:
    """The registered internal app of the real org a service window maps its followers into."""
    via = corp.map_via or ""
    try:
        real = rt.corp(via)
    except UnknownCorp:
        raise MappingUnavailable(f"--map-via {via} of {corp.corpid} is not registered") from None
    if real.kind != INTERNAL:
        raise MappingUnavailable(f"--map-via {via} of {corp.corpid} is registered as kind {real.kind}, not internal")
    return real


def _cached_link(
    rt: Runtime, corpid: str, unionid: str, entry: dict[str, Any], lookup: Callable[[str], UserLink]
) -> UserLink:
    """The corp's userid for `unionid`, from the link cache or else from DingTalk (then cached).

    Kept under the corp whose userid it is (the real org, for a service window), so that org's user_leave_org
    and user_modify_org events drop it (corp/links.py).
    """
    links = LinkCache(rt.store, corpid, rt.settings.userid_cache_ttl)
    link = links.get(unionid)
    entry["link_cached"] = link is not None
    if link is None:
        fresh = link = lookup(unionid)
        best_effort("userid link", corpid, lambda: links.put(unionid, fresh))
    return link
