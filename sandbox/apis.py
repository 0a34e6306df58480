"""Answer the upstream oapi calls as DingTalk does: issue tokens and tickets, redeem codes, look people up.

Every function here is called with `World.lock` held. The test controls that sit in front of these answers
(faults, busy, rate limit, latency) are in `sandbox.controls`; `Simulator.respond` puts the two together.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping

from sandbox.model import Code, Corp, Reply, SimulatorError, Ticket, Token, World, bad_param, no_such_user

TOKEN_TTL = 7200.0
TICKET_TTL = 7200.0

_BAD_TOKEN = (40014, "不合法的access_token")
_EXPIRED_TOKEN = (42001, "access_token超时")
# What the two token APIs answer a corpid they do not know and a wrong secret: /gettoken tells the two apart,
# /channel/get_channel_token does not.
_CORP_UNKNOWN = (40089, "不合法的corpid或corpsecret")
_CORP_SECRET_WRONG = (40001, "获取access_token时Secret错误，或者access_token无效")
_CHANNEL_REFUSED = (40089, "不合法的corpid或channel_secret")


def answer(world: World, api: str, params: Mapping[str, str]) -> Reply:
    """Answer one call of api with these query parameters; an upstream error is answered as its JSON body."""
    try:
        return _HANDLERS[api](world, params)
    except SimulatorError as e:
        return e.reply()


def caller_corp(world: World, params: Mapping[str, str]) -> str | None:
    """Name the corp a call is for: its corpid parameter, or the owner of its token."""
    corpid = params.get("corpid") or params.get("appkey")
    if corpid:
        return corpid
    token = world.tokens.get(params.get("access_token") or "")
    return token.corpid if token is not None else None


# ---- the seven APIs -------------------------------------------------------------------------------


def _get_token(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /gettoken (corp token pipeline)."""
    corpid = _param(params, "corpid", "appkey")
    secret = _param(params, "corpsecret", "appsecret")
    _check_secret(world, corpid, secret, "corp", unknown=_CORP_UNKNOWN, wrong=_CORP_SECRET_WRONG)
    token = _issue_token(world, corpid, "corp")
    return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": int(world.ttl(TOKEN_TTL))}


def _get_channel_token(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /channel/get_channel_token (channel token pipeline); no expires_in, as upstream.

    Under the lifetime control it names the shortened lifetime: a client rightly assumes DingTalk's 7200 s for an
    answer without one (dingtalk-oapi.md §1), and could not know of a lifetime DingTalk itself never shortens.
    """
    corpid = _param(params, "corpid")
    secret = _param(params, "channel_secret")
    _check_secret(world, corpid, secret, "channel", unknown=_CHANNEL_REFUSED, wrong=_CHANNEL_REFUSED)
    reply: dict[str, object] = {"errcode": 0, "errmsg": "ok", "access_token": _issue_token(world, corpid, "channel")}
    if world.lifetime is not None:
        reply["expires_in"] = int(world.lifetime)
    return reply


def _get_channel_ticket(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /channel/get_channel_jsapi_ticket."""
    token = _token(world, params, "channel")
    ticket = _issue_ticket(world, token.corpid, "channel")
    return {"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": int(world.ttl(TICKET_TTL))}


def _get_corp_ticket(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /get_jsapi_ticket."""
    token = _token(world, params, "corp")
    if params.get("type", "jsapi") != "jsapi":
        raise bad_param("type")
    ticket = _issue_ticket(world, token.corpid, "corp")
    return {"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": int(world.ttl(TICKET_TTL))}


def _get_by_code(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /channel/user/get_by_code: exchange a single-use follower code."""
    token = _token(world, params, "channel")
    code = _redeem(world, world.auth_codes, _param(params, "code"), token.corpid)
    if code is None:
        raise SimulatorError(40078, "不存在的临时授权码")
    person = world.corps[token.corpid].people[code.subject]
    return {"errcode": 0, "errmsg": "ok", "openid": person.openid, "unionid": person.unionid}


def _userid_by_unionid(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /user/getUseridByUnionid."""
    token = _token(world, params, "corp")
    person = world.corps[token.corpid].people.get(_param(params, "unionid"))
    if person is None or person.userid is None:
        raise no_such_user()
    return {"errcode": 0, "errmsg": "ok", "contactType": person.contact_type, "userid": person.userid}


def _user_info(world: World, params: Mapping[str, str]) -> Reply:
    """Answer GET /user/getuserinfo: exchange a single-use employee code."""
    token = _token(world, params, "corp")
    code = _redeem(world, world.employee_codes, _param(params, "code"), token.corpid)
    if code is None:
        raise SimulatorError(40029, "不合法的oauth_code")
    device = hashlib.sha256(code.subject.encode()).hexdigest()[:32]
    return {
        "errcode": 0,
        "errmsg": "ok",
        "userid": code.subject,
        "deviceId": device,
        "is_sys": False,
        "sys_level": 0,
    }


_HANDLERS: dict[str, Callable[[World, Mapping[str, str]], Reply]] = {
    "gettoken": _get_token,
    "channel/get_channel_token": _get_channel_token,
    "channel/get_channel_jsapi_ticket": _get_channel_ticket,
    "get_jsapi_ticket": _get_corp_ticket,
    "channel/user/get_by_code": _get_by_code,
    "user/getUseridByUnionid": _userid_by_unionid,
    "user/getuserinfo": _user_info,
}


# ---- what they share ------------------------------------------------------------------------------


def _param(params: Mapping[str, str], *names: str) -> str:
    """Return the first non-empty parameter of names or raise 40035."""
    for name in names:
        value = params.get(name)
        if value:
            return value
    raise bad_param(names[0])


def _check_secret(
    world: World, corpid: str, secret: str, pipeline: str, *, unknown: tuple[int, str], wrong: tuple[int, str]
) -> None:
    """Check a token request: raise `unknown` for a corpid not registered, 60020 for a caller the corp's whitelist
    blocks, `wrong` for a secret that is not the corp's secret of pipeline ("corp" or "channel")."""
    corp = world.corps.get(corpid)
    if corp is None:
        raise SimulatorError(*unknown)
    _check_whitelist(corp)
    expected = corp.corp_secret if pipeline == "corp" else corp.channel_secret
    if not _same(secret, expected):
        raise SimulatorError(*wrong)


def _token(world: World, params: Mapping[str, str], pipeline: str) -> Token:
    """Return the valid token of pipeline carried by the call, or raise 40014 / 42001."""
    token = world.tokens.get(params.get("access_token") or "")
    # A token of the other pipeline is as unknown here as a made-up one: the namespaces are separate.
    if token is None or token.pipeline != pipeline or token.revoked:
        raise SimulatorError(*_BAD_TOKEN)
    if world.now() >= token.expires_at:
        raise SimulatorError(*_EXPIRED_TOKEN)
    return token


def _issue_token(world: World, corpid: str, pipeline: str) -> str:
    """Return the corp's live token of pipeline, renewed, or a new one."""
    now = world.now()
    current = world.current_tokens.get((corpid, pipeline))
    if current is None or current.revoked or now >= current.expires_at:
        current = Token(secrets.token_hex(16), corpid, pipeline, now + world.ttl(TOKEN_TTL))
        world.tokens[current.value] = current
        world.current_tokens[(corpid, pipeline)] = current
    else:
        current.expires_at = now + world.ttl(TOKEN_TTL)
    return current.value


def _issue_ticket(world: World, corpid: str, kind: str) -> str:
    """Return a ticket of kind per the corp's ticket mode: a new one, or the live one renewed."""
    now = world.now()
    current = world.current_tickets.get((corpid, kind))
    live = current is not None and not current.superseded and now < current.expires_at
    if current is not None and live and world.corps[corpid].ticket_mode == "renew":
        current.expires_at = now + world.ttl(TICKET_TTL)
        return current.value
    if current is not None:
        current.superseded = True
    ticket = Ticket(secrets.token_urlsafe(64), corpid, kind, now + world.ttl(TICKET_TTL))
    world.tickets[ticket.value] = ticket
    world.current_tickets[(corpid, kind)] = ticket
    return ticket.value


def _check_whitelist(corp: Corp) -> None:
    """Raise 60020 if the corp's whitelist blocks the caller."""
    if corp.blocked_ip is not None:
        raise SimulatorError(60020, f"访问ip不在白名单之中,request ip={corp.blocked_ip}")


def _redeem(world: World, codes: dict[str, Code], value: str, corpid: str) -> Code | None:
    """Mark a live, unused code of this corp as used and return it; None if it is not redeemable."""
    code = codes.get(value)
    if code is None or code.used or code.corpid != corpid or world.now() >= code.expires_at:
        return None
    code.used = True
    return code


def _same(given: str, expected: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))
