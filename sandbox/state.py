"""Hold the simulated DingTalk state and answer upstream calls exactly as DingTalk would.

No Flask here: `Simulator.respond` takes an API name and its query parameters and returns either a
JSON-able dict or a raw (non-JSON) body. One lock guards all state, because the gateway's tests call
the simulator from many threads at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import re
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sandbox.demo import add_demo
from sandbox.signature import HASHES, accepted_urls, sign

TOKEN_TTL = 7200.0
TICKET_TTL = 7200.0
CODE_TTL = 300.0
# Longer than any sane client timeout; a typo must not hang a test run for hours.
MAX_LATENCY = 60.0

APIS: tuple[str, ...] = (
    "gettoken",
    "channel/get_channel_token",
    "channel/get_channel_jsapi_ticket",
    "get_jsapi_ticket",
    "channel/user/get_by_code",
    "user/getUseridByUnionid",
    "user/getuserinfo",
)
PIPELINES = ("channel", "corp")
TICKET_MODES = ("invalidate", "renew")
DEFAULT_BLOCKED_IP = "203.0.113.7"
BUSY = (-1, "系统繁忙")  # dingtalk-oapi.md §6: "system busy", to be retried with a small backoff

# A raw str is a non-JSON body (e.g. an HTML block page); a dict is the JSON body.
Reply: TypeAlias = dict[str, Any] | str

_DIGITS = re.compile(r"[0-9]+")


class SimulatorError(ValueError):
    """A DingTalk-shaped error: bad input to the simulator, or an upstream error answer."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg

    def reply(self) -> dict[str, Any]:
        """Return the error as DingTalk's JSON body."""
        return {"errcode": self.errcode, "errmsg": self.errmsg}


def _bad_param(name: str) -> SimulatorError:
    """Build the error for a missing or malformed parameter."""
    return SimulatorError(40035, f"不合法的参数: {name}")


_BAD_TOKEN = (40014, "不合法的access_token")
_EXPIRED_TOKEN = (42001, "access_token超时")


@dataclass(frozen=True)
class _Person:
    unionid: str
    openid: str
    name: str
    userid: str | None
    contact_type: int | None


@dataclass
class _Corp:
    corpid: str
    corp_secret: str
    channel_secret: str
    agent_id: str
    sign_hash: str
    ticket_mode: str = "invalidate"
    blocked_ip: str | None = None
    people: dict[str, _Person] = field(default_factory=dict)  # by unionid


@dataclass
class _Token:
    value: str
    corpid: str
    pipeline: str
    expires_at: float
    revoked: bool = False


@dataclass
class _Ticket:
    value: str
    corpid: str
    kind: str  # "channel" or "corp", as the pipeline whose token fetched it
    expires_at: float
    superseded: bool = False


@dataclass
class _Code:
    corpid: str
    subject: str  # unionid for follower codes, userid for employee codes
    expires_at: float
    used: bool = False


@dataclass
class _Fault:
    reply: Reply
    remaining: int
    corpid: str | None


@dataclass(frozen=True)
class _Busy:
    fraction: float
    processed: bool  # True: the call is carried out, and only then answered -1 (the uncertain case)


class Simulator:
    """Simulate the DingTalk open platform (oapi) for one or more corps."""

    def __init__(self, *, clock: Callable[[], float] = time.time, rate_limit: int | None = 20) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be positive or None")
        self._clock = clock
        self._offset = 0.0
        self._rate_limit = rate_limit
        self._lock = threading.Lock()
        self._corps: dict[str, _Corp] = {}
        self._tokens: dict[str, _Token] = {}
        self._current_tokens: dict[tuple[str, str], _Token] = {}
        self._tickets: dict[str, _Ticket] = {}
        self._current_tickets: dict[tuple[str, str], _Ticket] = {}
        self._auth_codes: dict[str, _Code] = {}
        self._employee_codes: dict[str, _Code] = {}
        self._faults: dict[str, deque[_Fault]] = {}
        self._latency: dict[str, float] = {}
        self._busy: dict[str, _Busy] = {}
        self._random = random.Random()
        self._calls: Counter[tuple[str, str | None]] = Counter()
        self._windows: dict[tuple[str, str | None], deque[float]] = {}

    @classmethod
    def demo(cls, *, clock: Callable[[], float] = time.time, rate_limit: int | None = 20) -> Simulator:
        """Return a simulator with the demo corp and its people registered."""
        sim = cls(clock=clock, rate_limit=rate_limit)
        add_demo(sim)
        return sim

    # ---- data -------------------------------------------------------------------------------------

    def add_corp(
        self,
        corpid: str,
        *,
        corp_secret: str,
        channel_secret: str,
        agent_id: str,
        sign_hash: str = "sha1",
    ) -> None:
        """Register a corp with its two secrets, its service-window agent id and its dd.config hash."""
        if sign_hash not in HASHES:
            raise SimulatorError(40035, f"sign_hash must be one of {HASHES}")
        if not corpid or not corp_secret or not channel_secret or not agent_id:
            raise SimulatorError(40035, "corpid, secrets and agent_id must be non-empty")
        with self._lock:
            if corpid in self._corps:
                raise SimulatorError(40035, f"corp {corpid} already registered")
            self._corps[corpid] = _Corp(corpid, corp_secret, channel_secret, str(agent_id), sign_hash)

    def add_person(
        self,
        corpid: str,
        *,
        unionid: str,
        openid: str,
        name: str,
        userid: str | None = None,
        contact_type: int | None = None,
    ) -> None:
        """Register a follower of the corp's service window; userid None means no user record."""
        if userid is None and contact_type is not None:
            raise SimulatorError(40035, "contact_type needs a userid")
        if contact_type not in (None, 0, 1):
            raise SimulatorError(40035, "contact_type must be 0 (employee) or 1 (external contact)")
        if userid is not None and contact_type is None:
            contact_type = 0
        with self._lock:
            corp = self._corp(corpid)
            if unionid in corp.people:
                raise SimulatorError(40035, f"unionid {unionid} already registered")
            corp.people[unionid] = _Person(unionid, openid, name, userid, contact_type)

    def set_user_record(self, corpid: str, unionid: str, userid: str | None, contact_type: int | None = 0) -> None:
        """Give a follower a user record (hired), change it, or take it away (left the corp)."""
        if contact_type not in (None, 0, 1):
            raise SimulatorError(40035, "contact_type must be 0 (employee) or 1 (external contact)")
        with self._lock:
            corp = self._corp(corpid)
            if unionid not in corp.people:
                raise SimulatorError(60121, "找不到该用户")
            person = corp.people[unionid]
            corp.people[unionid] = _Person(
                unionid, person.openid, person.name, userid, contact_type if userid is not None else None
            )

    # ---- controls for tests -----------------------------------------------------------------------

    def set_ticket_mode(self, corpid: str, mode: str) -> None:
        """Choose whether a ticket fetch issues a new ticket ("invalidate") or renews the same ("renew")."""
        if mode not in TICKET_MODES:
            raise SimulatorError(40035, f"mode must be one of {TICKET_MODES}")
        with self._lock:
            self._corp(corpid).ticket_mode = mode

    def revoke_tokens(self, corpid: str, pipeline: str = "all") -> None:
        """Make the corp's currently issued tokens of pipeline ("channel", "corp", "all") answer 40014."""
        if pipeline not in (*PIPELINES, "all"):
            raise SimulatorError(40035, "pipeline must be channel, corp or all")
        with self._lock:
            self._corp(corpid)
            for token in self._tokens.values():
                if token.corpid == corpid and pipeline in (token.pipeline, "all"):
                    token.revoked = True

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock forward."""
        _check_seconds(seconds)
        with self._lock:
            self._offset += seconds

    def inject(
        self,
        api: str,
        errcode: int,
        *,
        times: int = 1,
        errmsg: str = "injected",
        sub_code: int | None = None,
        raw: str | None = None,
        body: dict[str, Any] | None = None,
        corpid: str | None = None,
    ) -> None:
        """Make the next `times` calls of api (for corpid, or any corp) answer this error instead."""
        _check_api(api)
        if times < 1:
            raise SimulatorError(40035, "times must be at least 1")
        if raw is not None and body is not None:
            raise SimulatorError(40035, "give raw or body, not both")
        reply: Reply
        if raw is not None:
            reply = raw
        elif body is not None:
            reply = dict(body)
        else:
            reply = {"errcode": errcode, "errmsg": errmsg}
            if sub_code is not None:
                reply["sub_code"] = sub_code
        with self._lock:
            self._faults.setdefault(api, deque()).append(_Fault(reply, times, corpid))

    def set_latency(self, seconds: float, api: str = "*") -> None:
        """Delay every answer of api by seconds; "*" sets the default for APIs without their own setting."""
        _check_seconds(seconds)
        if seconds > MAX_LATENCY:
            raise SimulatorError(40035, f"latency is capped at {MAX_LATENCY:g} s")
        if api != "*":
            _check_api(api)
        with self._lock:
            self._latency[api] = seconds

    def set_busy(self, fraction: float, api: str = "*", *, processed: bool = False, seed: int | None = None) -> None:
        """Answer a random `fraction` of api's calls (0 turns it off) with -1, "system busy".

        By default a busy call is refused before anything happens (no code is spent, no ticket issued), which is
        what "busy" says. processed=True is the uncertain case: the call is carried out and its answer is lost to
        a -1, so a retried auth code then answers 40078. `seed` makes the sequence of busy answers repeatable.
        "*" sets the default for APIs without their own setting. Explicitly injected faults come first.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise _bad_param("fraction")
        if api != "*":
            _check_api(api)
        with self._lock:
            self._busy[api] = _Busy(float(fraction), processed)
            if seed is not None:
                self._random.seed(seed)

    def set_ip_blocked(self, corpid: str, ip: str | None = DEFAULT_BLOCKED_IP) -> None:
        """Make the corp's token endpoints answer 60020 naming ip as off the whitelist; None clears."""
        with self._lock:
            self._corp(corpid).blocked_ip = ip

    def calls(self, api: str | None = None, corpid: str | None = None) -> int:
        """Count upstream calls that reached the simulator (errors included), optionally filtered."""
        with self._lock:
            return sum(
                n
                for (call_api, call_corp), n in self._calls.items()
                if api in (None, call_api) and corpid in (None, call_corp)
            )

    def reset_calls(self) -> None:
        """Forget the call counts."""
        with self._lock:
            self._calls.clear()

    # ---- the DingTalk client side -----------------------------------------------------------------

    def mint_auth_code(self, corpid: str, unionid: str) -> str:
        """Return what dd.channel.permission.requestAuthCode yields for this follower."""
        with self._lock:
            corp = self._corp(corpid)
            if unionid not in corp.people:
                raise SimulatorError(60121, "找不到该用户")
            code = secrets.token_hex(16)
            self._auth_codes[code] = _Code(corpid, unionid, self._now() + CODE_TTL)
            return code

    def mint_employee_code(self, corpid: str, userid: str) -> str:
        """Return what dd.runtime.permission.requestAuthCode yields for this employee."""
        with self._lock:
            corp = self._corp(corpid)
            if not any(p.userid == userid and p.contact_type == 0 for p in corp.people.values()):
                raise SimulatorError(60121, "找不到该用户")
            code = secrets.token_hex(16)
            self._employee_codes[code] = _Code(corpid, userid, self._now() + CODE_TTL)
            return code

    def check_config(
        self,
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
        with self._lock:
            corp = self._corps.get(corpId)
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
            now = self._now()
            live = [t for t in self._tickets.values() if not t.superseded and now < t.expires_at]
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

    # ---- the upstream -----------------------------------------------------------------------------

    def respond(self, api: str, params: Mapping[str, str]) -> Reply:
        """Answer one upstream call of api with these query parameters."""
        _check_api(api)
        with self._lock:
            delay = self._latency.get(api, self._latency.get("*", 0.0))
        if delay:
            # Outside the lock: a slow answer must not hold up other callers.
            time.sleep(delay)
        with self._lock:
            corpid = self._caller_corp(params)
            self._calls[(api, corpid)] += 1
            fault = self._take_fault(api, corpid)
            if fault is not None:
                return fault
            busy = self._busy.get(api, self._busy.get("*"))
            if busy is not None and busy.fraction and self._random.random() < busy.fraction:
                if busy.processed:
                    try:
                        _HANDLERS[api](self, params)
                    except SimulatorError:
                        pass
                return {"errcode": BUSY[0], "errmsg": BUSY[1]}
            if self._throttled(api, corpid):
                return {"errcode": 90018, "errmsg": "当前请求被限流,请稍后重试"}
            try:
                return _HANDLERS[api](self, params)
            except SimulatorError as e:
                return e.reply()

    # ---- internals (all called with the lock held) ------------------------------------------------

    def _now(self) -> float:
        """Return the simulated time."""
        return self._clock() + self._offset

    def _corp(self, corpid: str) -> _Corp:
        """Return the registered corp or raise 40089."""
        corp = self._corps.get(corpid)
        if corp is None:
            raise SimulatorError(40089, "不合法的corpid")
        return corp

    def _caller_corp(self, params: Mapping[str, str]) -> str | None:
        """Name the corp a call is for: its corpid parameter, or the owner of its token."""
        corpid = params.get("corpid") or params.get("appkey")
        if corpid:
            return corpid
        token = self._tokens.get(params.get("access_token") or "")
        return token.corpid if token is not None else None

    def _take_fault(self, api: str, corpid: str | None) -> Reply | None:
        """Consume and return the first injected fault that applies to this call."""
        queue = self._faults.get(api)
        if not queue:
            return None
        for fault in queue:
            if fault.corpid in (None, corpid):
                fault.remaining -= 1
                if fault.remaining == 0:
                    queue.remove(fault)
                return dict(fault.reply) if isinstance(fault.reply, dict) else fault.reply
        return None

    def _throttled(self, api: str, corpid: str | None) -> bool:
        """Record the call in its 1 s sliding window and tell whether it exceeds the rate limit."""
        if self._rate_limit is None:
            return False
        now = self._now()
        window = self._windows.setdefault((api, corpid), deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        # Rejected calls count too: a client that keeps hammering stays throttled.
        window.append(now)
        return len(window) > self._rate_limit

    def _param(self, params: Mapping[str, str], *names: str) -> str:
        """Return the first non-empty parameter of names or raise 40035."""
        for name in names:
            value = params.get(name)
            if value:
                return value
        raise _bad_param(names[0])

    def _token(self, params: Mapping[str, str], pipeline: str) -> _Token:
        """Return the valid token of pipeline carried by the call, or raise 40014 / 42001."""
        token = self._tokens.get(params.get("access_token") or "")
        # A token of the other pipeline is as unknown here as a made-up one: the namespaces are separate.
        if token is None or token.pipeline != pipeline or token.revoked:
            raise SimulatorError(*_BAD_TOKEN)
        if self._now() >= token.expires_at:
            raise SimulatorError(*_EXPIRED_TOKEN)
        return token

    def _issue_token(self, corpid: str, pipeline: str) -> str:
        """Return the corp's live token of pipeline, renewed, or a new one."""
        now = self._now()
        current = self._current_tokens.get((corpid, pipeline))
        if current is None or current.revoked or now >= current.expires_at:
            current = _Token(secrets.token_hex(16), corpid, pipeline, now + TOKEN_TTL)
            self._tokens[current.value] = current
            self._current_tokens[(corpid, pipeline)] = current
        else:
            current.expires_at = now + TOKEN_TTL
        return current.value

    def _issue_ticket(self, corpid: str, kind: str) -> str:
        """Return a ticket of kind per the corp's ticket mode: a new one, or the live one renewed."""
        now = self._now()
        current = self._current_tickets.get((corpid, kind))
        live = current is not None and not current.superseded and now < current.expires_at
        if current is not None and live and self._corps[corpid].ticket_mode == "renew":
            current.expires_at = now + TICKET_TTL
            return current.value
        if current is not None:
            current.superseded = True
        ticket = _Ticket(secrets.token_urlsafe(64), corpid, kind, now + TICKET_TTL)
        self._tickets[ticket.value] = ticket
        self._current_tickets[(corpid, kind)] = ticket
        return ticket.value

    def _check_whitelist(self, corp: _Corp) -> None:
        """Raise 60020 if the corp's whitelist blocks the caller."""
        if corp.blocked_ip is not None:
            raise SimulatorError(60020, f"访问ip不在白名单之中,request ip={corp.blocked_ip}")

    def _get_token(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /gettoken (corp token pipeline)."""
        corpid = self._param(params, "corpid", "appkey")
        secret = self._param(params, "corpsecret", "appsecret")
        corp = self._corps.get(corpid)
        if corp is None:
            raise SimulatorError(40089, "不合法的corpid或corpsecret")
        self._check_whitelist(corp)
        if not _same(secret, corp.corp_secret):
            raise SimulatorError(40001, "获取access_token时Secret错误，或者access_token无效")
        token = self._issue_token(corpid, "corp")
        return {"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": int(TOKEN_TTL)}

    def _get_channel_token(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /channel/get_channel_token (channel token pipeline); no expires_in, as upstream."""
        corpid = self._param(params, "corpid")
        secret = self._param(params, "channel_secret")
        corp = self._corps.get(corpid)
        if corp is None:
            raise SimulatorError(40089, "不合法的corpid或channel_secret")
        self._check_whitelist(corp)
        if not _same(secret, corp.channel_secret):
            raise SimulatorError(40089, "不合法的corpid或channel_secret")
        return {"errcode": 0, "errmsg": "ok", "access_token": self._issue_token(corpid, "channel")}

    def _get_channel_ticket(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /channel/get_channel_jsapi_ticket."""
        token = self._token(params, "channel")
        ticket = self._issue_ticket(token.corpid, "channel")
        return {"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": int(TICKET_TTL)}

    def _get_corp_ticket(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /get_jsapi_ticket."""
        token = self._token(params, "corp")
        if params.get("type", "jsapi") != "jsapi":
            raise _bad_param("type")
        ticket = self._issue_ticket(token.corpid, "corp")
        return {"errcode": 0, "errmsg": "ok", "ticket": ticket, "expires_in": int(TICKET_TTL)}

    def _get_by_code(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /channel/user/get_by_code: exchange a single-use follower code."""
        token = self._token(params, "channel")
        code = self._redeem(self._auth_codes, self._param(params, "code"), token.corpid)
        if code is None:
            raise SimulatorError(40078, "不存在的临时授权码")
        person = self._corps[token.corpid].people[code.subject]
        return {"errcode": 0, "errmsg": "ok", "openid": person.openid, "unionid": person.unionid}

    def _userid_by_unionid(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /user/getUseridByUnionid."""
        token = self._token(params, "corp")
        person = self._corps[token.corpid].people.get(self._param(params, "unionid"))
        if person is None or person.userid is None:
            raise SimulatorError(60121, "找不到该用户")
        return {"errcode": 0, "errmsg": "ok", "contactType": person.contact_type, "userid": person.userid}

    def _user_info(self, params: Mapping[str, str]) -> Reply:
        """Answer GET /user/getuserinfo: exchange a single-use employee code."""
        token = self._token(params, "corp")
        code = self._redeem(self._employee_codes, self._param(params, "code"), token.corpid)
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

    def _redeem(self, codes: dict[str, _Code], value: str, corpid: str) -> _Code | None:
        """Mark a live, unused code of this corp as used and return it; None if it is not redeemable."""
        code = codes.get(value)
        if code is None or code.used or code.corpid != corpid or self._now() >= code.expires_at:
            return None
        code.used = True
        return code


_HANDLERS: dict[str, Callable[[Simulator, Mapping[str, str]], Reply]] = {
    "gettoken": Simulator._get_token,
    "channel/get_channel_token": Simulator._get_channel_token,
    "channel/get_channel_jsapi_ticket": Simulator._get_channel_ticket,
    "get_jsapi_ticket": Simulator._get_corp_ticket,
    "channel/user/get_by_code": Simulator._get_by_code,
    "user/getUseridByUnionid": Simulator._userid_by_unionid,
    "user/getuserinfo": Simulator._user_info,
}


def _check_api(api: str) -> None:
    """Raise 40035 unless api names a simulated upstream API."""
    if api not in APIS:
        raise SimulatorError(40035, f"unknown api {api!r}; known: {', '.join(APIS)}")


def _check_seconds(seconds: float) -> None:
    """Raise 40035 unless seconds is a finite, non-negative number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise _bad_param("seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise _bad_param("seconds")


def _same(given: str, expected: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def _config_error(code: int, message: str) -> dict[str, Any]:
    """Build a dd.error payload."""
    return {"ok": False, "errorCode": code, "errorMessage": message}


def _signed_by(tickets: list[_Ticket], given: str, nonce: str, timestamp: str, urls: list[str], hash_name: str) -> bool:
    """Tell whether given is the signature of one of tickets for one of urls."""
    given_bytes = given.encode("utf-8", "surrogatepass")
    for ticket in tickets:
        for url in urls:
            expected = sign(ticket=ticket.value, nonce=nonce, timestamp=timestamp, url=url, hash_name=hash_name)
            if hmac.compare_digest(given_bytes, expected.encode()):
                return True
    return False
