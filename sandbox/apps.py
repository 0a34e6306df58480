"""The current generation of DingTalk apps (dingtalk-oapi.md §7.1-7.3): orgs and their members, apps with an
appKey/appSecret in an org, and what api.dingtalk.com (`/v1.0/...`) and topapi answer them.

An org is a real corp or a service window's hidden virtual org (then `virtual_of` names the real corp). Its members
are employees of the real org, or the window's followers in the virtual org. Every answer here is called with
`World.lock` held (the same lock and clock as the legacy simulator); the controls in front of them (QPS limit,
injected errors, call counts) are in `sandbox.app_controls`.

A v1.0 answer is `(status, body)`: 2xx with the payload, else `{"code", "message", "requestid"}`. topapi keeps the
oapi style: HTTP 200 with `errcode`, a token error as errcode 88 with sub_code "40014", the payload under `result`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from sandbox.model import SimulatorError, World
from sandbox.signature import HASHES

APP_TOKEN_TTL = 7200.0
APP_TICKET_TTL = 7200.0
APP_TICKET_MAX_AGE = 86_400.0  # a renewed ticket lives at most 24 h after it was created (§7.2)
APP_CODE_TTL = 300.0

ACCESS_TOKEN = "v1.0/oauth2/accessToken"
JSAPI_TICKETS = "v1.0/oauth2/jsapiTickets"
GET_USER_INFO = "topapi/v2/user/getuserinfo"
V1_APIS = (ACCESS_TOKEN, JSAPI_TICKETS)
APP_APIS = (*V1_APIS, GET_USER_INFO)

TOKEN_HEADER = "x-acs-dingtalk-access-token"

V1Answer = tuple[int, dict[str, Any]]


class V1Error(Exception):
    """An api.dingtalk.com error answer: a non-2xx status and a string code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    def answer(self) -> V1Answer:
        """Return the error as (status, body), with a fresh request id as DingTalk sends."""
        return self.status, {"code": self.code, "message": self.message, "requestid": secrets.token_hex(8).upper()}


@dataclass(frozen=True)
class Member:
    userid: str
    unionid: str
    name: str
    associated_unionid: str = ""
    sys: bool = False
    sys_level: int = 0
    contact_type: int = 0  # in a real org: 0 an employee, 1 an external contact (topapi/user/getbyunionid)


@dataclass
class Org:
    corpid: str
    virtual_of: str | None = None  # the real corp of a service window's virtual org
    members: dict[str, Member] = field(default_factory=dict)  # by userid


# How DingTalk judges an app's dd.config (dingtalk-oapi.md §7.2 leaves both open: U), per app so that a test can run
# the gateway under either reading: the type it must carry, and the one hash DingTalk verifies its signature with.
APP_CONFIG_TYPE = 0
APP_SIGN_HASH = "sha256"


@dataclass(frozen=True)
class App:
    app_key: str
    app_secret: str
    corpid: str
    agent_id: str = ""  # the agentId its pages' dd.config names; "" = none (such an app cannot pass dd.config)
    sign_hash: str = APP_SIGN_HASH
    config_type: int = APP_CONFIG_TYPE


@dataclass
class Issued:
    """An app token or JSAPI ticket."""

    value: str
    app_key: str
    created_at: float
    expires_at: float
    revoked: bool = False


@dataclass
class AppCode:
    app_key: str
    userid: str
    expires_at: float
    used: bool = False


class Apps:
    """The orgs, apps and what was issued to them; data methods take the world's lock, answers expect it held."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.orgs: dict[str, Org] = {}
        self.apps: dict[str, App] = {}  # by appKey
        self.tokens: dict[str, Issued] = {}
        self.current_token: dict[str, Issued] = {}  # by appKey
        self.current_ticket: dict[str, Issued] = {}  # by appKey
        self.codes: dict[str, AppCode] = {}

    # ---- data -------------------------------------------------------------------------------------------

    def add_org(self, corpid: str, *, virtual_of: str | None = None) -> None:
        """Register an org: a real corp, or the virtual org of the service window of corp `virtual_of`."""
        if not corpid:
            raise SimulatorError(40035, "corpid must be non-empty")
        with self.world.lock:
            if corpid in self.orgs:
                raise SimulatorError(40035, f"org {corpid} already registered")
            self.orgs[corpid] = Org(corpid, virtual_of)

    def add_member(
        self,
        corpid: str,
        *,
        userid: str,
        unionid: str,
        name: str,
        associated_unionid: str = "",
        sys: bool = False,
        sys_level: int = 0,
        contact_type: int = 0,
    ) -> None:
        """Register a member of an org: an employee or external contact, or a follower in a virtual org."""
        if contact_type not in (0, 1):
            raise SimulatorError(40035, "contact_type must be 0 (employee) or 1 (external contact)")
        with self.world.lock:
            org = self._org(corpid)
            if userid in org.members:
                raise SimulatorError(40035, f"userid {userid} already registered in {corpid}")
            org.members[userid] = Member(userid, unionid, name, associated_unionid, sys, sys_level, contact_type)

    def add_app(
        self,
        corpid: str,
        *,
        app_key: str,
        app_secret: str,
        agent_id: str = "",
        sign_hash: str = APP_SIGN_HASH,
        config_type: int = APP_CONFIG_TYPE,
    ) -> None:
        """Register an app (appKey = the page's clientId; agent_id = its pages' dd.config agentId) in an org."""
        if not app_key or not app_secret:
            raise SimulatorError(40035, "app_key and app_secret must be non-empty")
        _check_dd_config(sign_hash, config_type)
        with self.world.lock:
            self._org(corpid)
            if app_key in self.apps:
                raise SimulatorError(40035, f"app {app_key} already registered")
            # dd.config names the app by (corpId, agentId), so two apps of one org cannot share an agent id.
            if agent_id and self.app_of_agent(corpid, agent_id) is not None:
                raise SimulatorError(40035, f"agent id {agent_id} already used in org {corpid}")
            self.apps[app_key] = App(app_key, app_secret, corpid, agent_id, sign_hash, config_type)

    def set_dd_config(self, app_key: str, *, sign_hash: str | None = None, config_type: int | None = None) -> None:
        """Change how DingTalk judges the app's dd.config: the hash it verifies with, the type it requires."""
        with self.world.lock:
            app = self.apps.get(app_key)
            if app is None:
                raise SimulatorError(40035, f"no app {app_key}")
            new = replace(
                app,
                sign_hash=app.sign_hash if sign_hash is None else sign_hash,
                config_type=app.config_type if config_type is None else config_type,
            )
            _check_dd_config(new.sign_hash, new.config_type)
            self.apps[app_key] = new

    def app_of_agent(self, corpid: str, agent_id: str) -> App | None:
        """The app of org `corpid` whose agent id is `agent_id` (the world's lock held)."""
        if not agent_id:
            return None
        return next((a for a in self.apps.values() if a.corpid == corpid and a.agent_id == agent_id), None)

    def mint_app_code(self, corpid: str, client_id: str, userid: str) -> str:
        """Return what dd.requestAuthCode({corpId, clientId}) yields for this member: 5 minutes, single use."""
        with self.world.lock:
            app = self.apps.get(client_id)
            if app is None or app.corpid != corpid:
                raise SimulatorError(40035, f"no app {client_id} in org {corpid}")
            if userid not in self._org(corpid).members:
                raise SimulatorError(60121, "找不到该用户")
            code = secrets.token_hex(16)
            self.codes[code] = AppCode(client_id, userid, self.world.now() + APP_CODE_TTL)
            return code

    def revoke_app_tokens(self, app_key: str) -> None:
        """Make the app's issued tokens answer InvalidAuthentication (v1.0) and 88/40014 (topapi)."""
        with self.world.lock:
            for token in self.tokens.values():
                if token.app_key == app_key:
                    token.revoked = True

    def _org(self, corpid: str) -> Org:
        org = self.orgs.get(corpid)
        if org is None:
            raise SimulatorError(40035, f"no org {corpid}")
        return org

    # ---- who is calling ---------------------------------------------------------------------------------

    def caller(self, api: str, token: str | None, body: dict[str, Any]) -> str | None:
        """Name the app a call is for: the appKey of a token fetch, or the owner of its token."""
        if api == ACCESS_TOKEN:
            key = body.get("appKey")
            return key if isinstance(key, str) else None
        issued = self.tokens.get(token or "")
        return issued.app_key if issued is not None else None

    # ---- api.dingtalk.com (v1.0) ------------------------------------------------------------------------

    def answer_v1(self, api: str, token: str | None, body: dict[str, Any]) -> V1Answer:
        """Answer one v1.0 call; `token` is the x-acs-dingtalk-access-token header."""
        try:
            if api == ACCESS_TOKEN:
                return 200, self._access_token(body)
            return 200, self._jsapi_ticket(token)
        except V1Error as e:
            return e.answer()

    def _access_token(self, body: dict[str, Any]) -> dict[str, Any]:
        app = self.apps.get(str(body.get("appKey") or ""))
        secret = body.get("appSecret")
        if app is None or not isinstance(secret, str) or not _same(secret, app.app_secret):
            raise V1Error(400, "invalidClientIdOrSecret", "无效的clientId或clientSecret")
        now = self.world.now()
        current = self.current_token.get(app.app_key)
        if current is None or current.revoked or now >= current.expires_at:
            current = Issued(secrets.token_hex(16), app.app_key, now, now + self.world.ttl(APP_TOKEN_TTL))
            self.tokens[current.value] = current
            self.current_token[app.app_key] = current
        else:  # the same token, its lifetime extended (§7.2)
            current.expires_at = now + self.world.ttl(APP_TOKEN_TTL)
        return {"accessToken": current.value, "expireIn": int(self.world.ttl(APP_TOKEN_TTL))}

    def _jsapi_ticket(self, token: str | None) -> dict[str, Any]:
        app_key = self._v1_token(token)
        now = self.world.now()
        current = self.current_ticket.get(app_key)
        if current is None or now >= current.expires_at:
            current = Issued(secrets.token_urlsafe(48), app_key, now, now + self.world.ttl(APP_TICKET_TTL))
            self.current_ticket[app_key] = current
        else:  # the same ticket, renewed by 2 h, at most 24 h after it was created (§7.2)
            current.expires_at = min(now + self.world.ttl(APP_TICKET_TTL), current.created_at + APP_TICKET_MAX_AGE)
        return {"jsapiTicket": current.value, "expireIn": max(1, int(current.expires_at - now))}

    def _v1_token(self, token: str | None) -> str:
        issued = self._live_token(token)
        if issued is None:
            raise V1Error(400, "InvalidAuthentication", "不合法的access_token")
        return issued.app_key

    def _live_token(self, token: str | None) -> Issued | None:
        issued = self.tokens.get(token or "")
        if issued is None or issued.revoked or self.world.now() >= issued.expires_at:
            return None
        return issued

    # ---- oapi.dingtalk.com/topapi -------------------------------------------------------------------------

    def answer_user_info(self, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Answer POST /topapi/v2/user/getuserinfo?access_token=APP_TOKEN {code}."""
        request_id = secrets.token_hex(8)
        issued = self._live_token(token)
        if issued is None:
            return topapi_bad_token(request_id)
        # A code is redeemed with a token of the app whose clientId requested it (a simulator choice: §7.3 does
        # not say whether another app of the same org may redeem it).
        code = self.codes.get(str(body.get("code") or ""))
        if code is None or code.used or code.app_key != issued.app_key or self.world.now() >= code.expires_at:
            return {"errcode": 40078, "errmsg": "不存在的临时授权码", "request_id": request_id}
        code.used = True
        member = self.orgs[self.apps[issued.app_key].corpid].members[code.userid]
        return {
            "errcode": 0,
            "errmsg": "ok",
            "result": {
                "userid": member.userid,
                "unionid": member.unionid,
                "associated_unionid": member.associated_unionid,
                "name": member.name,
                "sys": member.sys,
                "sys_level": member.sys_level,
                "device_id": hashlib.sha256(member.userid.encode()).hexdigest()[:32],
            },
            "request_id": request_id,
        }


def _check_dd_config(sign_hash: str, config_type: int) -> None:
    if sign_hash not in HASHES:
        raise SimulatorError(40035, f"sign_hash must be one of {', '.join(HASHES)}")
    if isinstance(config_type, bool) or config_type not in (0, 1):
        raise SimulatorError(40035, "config_type must be 0 or 1 (dd.config's type)")


def _same(given: str, expected: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def topapi_bad_token(request_id: str) -> dict[str, Any]:
    """How a topapi endpoint refuses an invalid or expired token: errcode 88 with sub_code 40014 (§7.1)."""
    return {
        "errcode": 88,
        "errmsg": "不合法的access_token",
        "sub_code": "40014",
        "sub_msg": "不合法的access_token",
        "request_id": request_id,
    }
