"""The corp-token pipeline and the calls that need the corp token (never the channel token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from oapi.errcodes import effective_errcode, expires_in, malformed, text_field
from oapi.tokens import CorpToken, Credentials, with_token
from oapi.upstream import Upstream

NO_SUCH_USER = 60121
API_USERID = "user/getUseridByUnionid"
CONTACT_TYPES = (0, 1)  # employee, external contact


class CorpApp(Protocol):
    """The registration this client calls DingTalk for (corpid + corpSecret): corp/registry.py's
    Corp is one. A Protocol, so oapi knows nothing of the registry that stores it."""

    @property
    def corpid(self) -> str: ...

    @property
    def corp_secret(self) -> str: ...


@dataclass(frozen=True)
class UserLink:
    """A unionid's place in the corp: userid and contactType (0 employee, 1 external contact), or unlinked."""

    userid: str | None
    contact_type: int | None

    @property
    def linked(self) -> bool:
        return self.userid is not None


class CorpClient:
    """Calls made with corpid + corpSecret."""

    def __init__(self, corp: CorpApp, upstream: Upstream, credentials: Credentials) -> None:
        self.corp = corp
        self._upstream = upstream
        self.token = credentials.cache(corp.corpid, "corp:token", CorpToken, self._fetch_token)

    def _fetch_token(self) -> tuple[str, int | None]:
        body = self._upstream.call(
            "gettoken",
            {"corpid": self.corp.corpid, "corpsecret": self.corp.corp_secret},
            corpid=self.corp.corpid,
            token_fetch=True,
        )
        return text_field("gettoken", body, "access_token"), expires_in("gettoken", body)

    def userid_for_unionid(self, unionid: str) -> UserLink:
        """Map a unionid to the corp's userid; a follower with no user record is unlinked, not an error."""

        def call(token: CorpToken) -> dict:
            return self._upstream.call(
                API_USERID,
                {"access_token": token.value, "unionid": unionid},
                corpid=self.corp.corpid,
                accept=frozenset({NO_SUCH_USER}),
            )

        body = with_token(self.token, call)
        if effective_errcode(body) == NO_SUCH_USER:
            return UserLink(None, None)
        # A success without a userid is not "no such user" (that is 60121): it is an answer we cannot use.
        userid = text_field(API_USERID, body, "userid")
        contact = body.get("contactType")
        if contact is not None and (type(contact) is not int or contact not in CONTACT_TYPES):  # JSON true is no 1
            raise malformed(API_USERID, body, f"`contactType` {str(contact)[:20]!r} is neither 0 nor 1")
        return UserLink(userid, contact)
