"""Hold the simulated DingTalk's data: corps, their people, and the tokens, tickets and codes issued to them.

One lock (`World.lock`) guards all of it and the test controls too, because the gateway's tests call the
simulator from many threads at once. The directory methods here take it themselves; the other simulator modules
either take it or say that they are called with it held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from sandbox.signature import HASHES

APIS: tuple[str, ...] = (
    "gettoken",
    "channel/get_channel_token",
    "channel/get_channel_jsapi_ticket",
    "get_jsapi_ticket",
    "channel/user/get_by_code",
    "user/getUseridByUnionid",
    "user/getuserinfo",
)

# A raw str is a non-JSON body (e.g. an HTML block page); a dict is the JSON body.
Reply: TypeAlias = dict[str, Any] | str


class SimulatorError(ValueError):
    """A DingTalk-shaped error: bad input to the simulator, or an upstream error answer."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"{errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg

    def reply(self) -> dict[str, Any]:
        """Return the error as DingTalk's JSON body."""
        return {"errcode": self.errcode, "errmsg": self.errmsg}


def bad_param(name: str) -> SimulatorError:
    """Build the error for a missing or malformed parameter."""
    return SimulatorError(40035, f"不合法的参数: {name}")


def check_api(api: str) -> None:
    """Raise 40035 unless api names a simulated upstream API."""
    if api not in APIS:
        raise SimulatorError(40035, f"unknown api {api!r}; known: {', '.join(APIS)}")


def no_such_user() -> SimulatorError:
    """Build the error for a person the corp does not know."""
    return SimulatorError(60121, "找不到该用户")


@dataclass(frozen=True)
class Person:
    unionid: str
    openid: str
    name: str
    userid: str | None
    contact_type: int | None


@dataclass
class Corp:
    corpid: str
    corp_secret: str
    channel_secret: str
    agent_id: str
    sign_hash: str
    ticket_mode: str = "invalidate"
    blocked_ip: str | None = None
    people: dict[str, Person] = field(default_factory=dict)  # by unionid


@dataclass
class Token:
    value: str
    corpid: str
    pipeline: str
    expires_at: float
    revoked: bool = False


@dataclass
class Ticket:
    value: str
    corpid: str
    kind: str  # "channel" or "corp", as the pipeline whose token fetched it
    expires_at: float
    superseded: bool = False


@dataclass
class Code:
    corpid: str
    subject: str  # unionid for follower codes, userid for employee codes
    expires_at: float
    used: bool = False


class World:
    """The simulated upstream's data and clock, and the directory of corps and people."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.offset = 0.0  # moved by the advance control
        # Set by the lifetime control: how long every token and ticket issued from then on lives (None: DingTalk's).
        self.lifetime: float | None = None
        self.lock = threading.Lock()
        self.corps: dict[str, Corp] = {}
        self.tokens: dict[str, Token] = {}
        self.current_tokens: dict[tuple[str, str], Token] = {}  # by (corpid, pipeline)
        self.tickets: dict[str, Ticket] = {}
        self.current_tickets: dict[tuple[str, str], Ticket] = {}  # by (corpid, kind)
        self.auth_codes: dict[str, Code] = {}
        self.employee_codes: dict[str, Code] = {}

    def now(self) -> float:
        """Return the simulated time."""
        return self.clock() + self.offset

    def ttl(self, default: float) -> float:
        """How long a token or ticket issued now lives: DingTalk's `default`, unless the lifetime control says less."""
        return default if self.lifetime is None else self.lifetime

    def corp(self, corpid: str) -> Corp:
        """Return the registered corp or raise 40089; called with the lock held."""
        corp = self.corps.get(corpid)
        if corp is None:
            raise SimulatorError(40089, "不合法的corpid")
        return corp

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
        with self.lock:
            if corpid in self.corps:
                raise SimulatorError(40035, f"corp {corpid} already registered")
            self.corps[corpid] = Corp(corpid, corp_secret, channel_secret, str(agent_id), sign_hash)

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
        _check_contact_type(contact_type)
        if userid is not None and contact_type is None:
            contact_type = 0
        with self.lock:
            corp = self.corp(corpid)
            if unionid in corp.people:
                raise SimulatorError(40035, f"unionid {unionid} already registered")
            corp.people[unionid] = Person(unionid, openid, name, userid, contact_type)

    def set_user_record(self, corpid: str, unionid: str, userid: str | None, contact_type: int | None = 0) -> None:
        """Give a follower a user record (hired), change it, or take it away (left the corp)."""
        _check_contact_type(contact_type)
        with self.lock:
            corp = self.corp(corpid)
            if unionid not in corp.people:
                raise no_such_user()
            person = corp.people[unionid]
            corp.people[unionid] = Person(
                unionid, person.openid, person.name, userid, contact_type if userid is not None else None
            )


def _check_contact_type(contact_type: int | None) -> None:
    """Raise 40035 unless contact_type is None, 0 (employee) or 1 (external contact)."""
    if contact_type not in (None, 0, 1):
        raise SimulatorError(40035, "contact_type must be 0 (employee) or 1 (external contact)")
