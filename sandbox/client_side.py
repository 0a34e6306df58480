"""Play the DingTalk app inside the page: mint the auth codes its JSAPIs yield, and judge dd.config as it does."""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any

from sandbox.model import Code, Ticket, World, no_such_user
from sandbox.signature import accepted_urls, sign

CODE_TTL = 300.0

_DIGITS = re.compile(r"[0-9]+")


def mint_auth_code(world: World, corpid: str, unionid: str) -> str:
    """Return what dd.channel.permission.requestAuthCode yields for this follower."""
    with world.lock:
        corp = world.corp(corpid)
        if unionid not in corp.people:
            raise no_such_user()
        code = secrets.token_hex(16)
        world.auth_codes[code] = Code(corpid, unionid, world.now() + CODE_TTL)
        return code


def mint_employee_code(world: World, corpid: str, userid: str) -> str:
    """Return what dd.runtime.permission.requestAuthCode yields for this employee."""
    with world.lock:
        corp = world.corp(corpid)
        if not any(p.userid == userid and p.contact_type == 0 for p in corp.people.values()):
            raise no_such_user()
        code = secrets.token_hex(16)
        world.employee_codes[code] = Code(corpid, userid, world.now() + CODE_TTL)
        return code


def check_config(
    world: World,
    *,
    corpId: str,
    agentId: str,
    timeStamp: str,
    nonceStr: str,
    signature: str,
    type: int,
    url: str,
) -> dict[str, Any]:
    """Judge a dd.config call as the DingTalk client does."""
    with world.lock:
        corp = world.corps.get(corpId)
        if corp is None:
            return _config_error(52010, "corpId错误")
        if type != 1 or isinstance(type, bool) or str(agentId) != corp.agent_id:
            return _config_error(52019, "agentId错误")
        if not isinstance(timeStamp, str) or not _DIGITS.fullmatch(timeStamp):
            return _config_error(52018, "timeStamp错误")
        if not isinstance(nonceStr, str) or not nonceStr:
            return _config_error(52015, "nonceStr错误")
        if not isinstance(url, str) or not url:
            return _config_error(52014, "url错误")
        now = world.now()
        live = [t for t in world.tickets.values() if not t.superseded and now < t.expires_at]
        own = [t for t in live if t.corpid == corp.corpid and t.kind == "channel"]
        if not own:
            return _config_error(52011, "jsapi_ticket读取失败")
        urls = accepted_urls(url)
        given = signature if isinstance(signature, str) else ""
        if _signed_by(own, given, nonceStr, timeStamp, urls, corp.sign_hash):
            return {"ok": True}
        # Name the classic mistakes the way the client does.
        corp_tickets = [t for t in live if t.corpid == corp.corpid and t.kind == "corp"]
        if _signed_by(corp_tickets, given, nonceStr, timeStamp, urls, corp.sign_hash):
            return _config_error(52019, "ticket不是由corpId和channelSecret生成的")
        foreign = [t for t in live if t.corpid != corp.corpid]
        if _signed_by(foreign, given, nonceStr, timeStamp, urls, corp.sign_hash):
            return _config_error(52011, "jsapi_ticket不属于该corpId")
        return _config_error(52013, "签名校验失败")


def _config_error(code: int, message: str) -> dict[str, Any]:
    """Build a dd.error payload."""
    return {"ok": False, "errorCode": code, "errorMessage": message}


def _signed_by(tickets: list[Ticket], given: str, nonce: str, timestamp: str, urls: list[str], hash_name: str) -> bool:
    """Tell whether given is the signature of one of tickets for one of urls."""
    given_bytes = given.encode("utf-8", "surrogatepass")
    for ticket in tickets:
        for url in urls:
            expected = sign(ticket=ticket.value, nonce=nonce, timestamp=timestamp, url=url, hash_name=hash_name)
            if hmac.compare_digest(given_bytes, expected.encode()):
                return True
    return False
