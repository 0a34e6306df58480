"""Play the DingTalk app inside the page: mint the auth codes its JSAPIs yield, and judge dd.config as it does."""

from __future__ import annotations

import hmac
import re
import secrets
from typing import Any

from sandbox.apps import App, Apps
from sandbox.model import Code, World, no_such_user
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
    apps: Apps,
    *,
    corpId: str,
    agentId: str,
    timeStamp: str,
    nonceStr: str,
    signature: str,
    type: int,
    url: str,
) -> dict[str, Any]:
    """Judge a dd.config call as the DingTalk client does.

    The client names the app by (corpId, agentId): an app of a current-generation org (`sandbox.apps`, signed with
    the app's own JSAPI ticket, dingtalk-oapi.md §7.2), else the legacy corp's service window (channel ticket).
    """
    with world.lock:
        app = apps.app_of_agent(corpId, str(agentId)) if corpId in apps.orgs else None
        if app is None and corpId not in world.corps and corpId in apps.orgs:
            return _config_error(52019, "agentId错误")  # an org DingTalk knows, but no app of it has this agentId
        if app is not None:
            return _check_app_config(world, apps, app, timeStamp, nonceStr, signature, type, url)
        corp = world.corps.get(corpId)
        if corp is None:
            return _config_error(52010, "corpId错误")
        if type != 1 or isinstance(type, bool) or str(agentId) != corp.agent_id:
            return _config_error(52019, "agentId错误")
        fault = _field_fault(timeStamp, nonceStr, url)
        if fault is not None:
            return fault
        now = world.now()
        live = [t for t in world.tickets.values() if not t.superseded and now < t.expires_at]
        own = [t.value for t in live if t.corpid == corp.corpid and t.kind == "channel"]
        if not own:
            return _config_error(52011, "jsapi_ticket读取失败")
        urls = accepted_urls(url)
        given = signature if isinstance(signature, str) else ""
        if _signed_by(own, given, nonceStr, timeStamp, urls, corp.sign_hash):
            return {"ok": True}
        # Name the classic mistakes the way the client does.
        corp_tickets = [t.value for t in live if t.corpid == corp.corpid and t.kind == "corp"]
        if _signed_by(corp_tickets, given, nonceStr, timeStamp, urls, corp.sign_hash):
            return _config_error(52019, "ticket不是由corpId和channelSecret生成的")
        foreign = [t.value for t in live if t.corpid != corp.corpid]
        if _signed_by(foreign, given, nonceStr, timeStamp, urls, corp.sign_hash):
            return _config_error(52011, "jsapi_ticket不属于该corpId")
        return _config_error(52013, "签名校验失败")


def _check_app_config(
    world: World, apps: Apps, app: App, timestamp: str, nonce: str, signature: str, config_type: int, url: str
) -> dict[str, Any]:
    """Judge a dd.config for a current-generation app: its type, then its signature with the app's live ticket and the
    one hash DingTalk verifies this app with (the world's lock held)."""
    if config_type != app.config_type or isinstance(config_type, bool):
        # The legacy page's mistake (type 1 is the service window's channel ticket) named as the client names it.
        return _config_error(52019, f"type错误，该应用的dd.config须为type {app.config_type}")
    fault = _field_fault(timestamp, nonce, url)
    if fault is not None:
        return fault
    now = world.now()
    live = {key: t.value for key, t in apps.current_ticket.items() if now < t.expires_at}
    own = [live[app.app_key]] if app.app_key in live else []
    if not own:
        return _config_error(52011, "jsapi_ticket读取失败")
    urls = accepted_urls(url)
    given = signature if isinstance(signature, str) else ""
    if _signed_by(own, given, nonce, timestamp, urls, app.sign_hash):
        return {"ok": True}
    # Another app's ticket (the window's for the internal app, or the reverse) or a legacy channel/corp ticket.
    foreign = [value for key, value in live.items() if key != app.app_key]
    foreign += [t.value for t in world.tickets.values() if not t.superseded and now < t.expires_at]
    if _signed_by(foreign, given, nonce, timestamp, urls, app.sign_hash):
        return _config_error(52011, "jsapi_ticket不属于该应用")
    return _config_error(52013, "签名校验失败")


def _field_fault(timestamp: str, nonce: str, url: str) -> dict[str, Any] | None:
    """The error for a malformed timeStamp, nonceStr or url, in the order the client checks them; None if all fit."""
    if not isinstance(timestamp, str) or not _DIGITS.fullmatch(timestamp):
        return _config_error(52018, "timeStamp错误")
    if not isinstance(nonce, str) or not nonce:
        return _config_error(52015, "nonceStr错误")
    if not isinstance(url, str) or not url:
        return _config_error(52014, "url错误")
    return None


def _config_error(code: int, message: str) -> dict[str, Any]:
    """Build a dd.error payload."""
    return {"ok": False, "errorCode": code, "errorMessage": message}


def _signed_by(tickets: list[str], given: str, nonce: str, timestamp: str, urls: list[str], hash_name: str) -> bool:
    """Tell whether given is the signature of one of tickets (their values) for one of urls."""
    given_bytes = given.encode("utf-8", "surrogatepass")
    for ticket in tickets:
        for url in urls:
            expected = sign(ticket=ticket, nonce=nonce, timestamp=timestamp, url=url, hash_name=hash_name)
            if hmac.compare_digest(given_bytes, expected.encode()):
                return True
    return False
