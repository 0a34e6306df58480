"""The corp-token pipeline and the calls that need the corp token (never the channel token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from oapi.client import App, AppClient
from oapi.credentials import CORP_TOKEN, CorpToken
from oapi.errcodes import effective_errcode, malformed, text_field
from oapi.tokens import Credentials
from oapi.upstream import Upstream

NO_SUCH_USER = 60121  # no user with this unionid in the corp: unlinked, not an error
API_USERID = "user/getUseridByUnionid"
CONTACT_TYPES = (0, 1)  # employee, external contact


class CorpApp(App, Protocol):
    """A registration with this app's secret (corpid + corpSecret)."""

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


class CorpClient(AppClient[CorpToken]):
    """Calls made with corpid + corpSecret."""

    token_pipeline = CORP_TOKEN
    secret_param = "corpsecret"
    corp: CorpApp

    def __init__(self, corp: CorpApp, upstream: Upstream, credentials: Credentials) -> None:
        super().__init__(corp, CorpToken, upstream, credentials)

    def secret(self) -> str:
        return self.corp.corp_secret

    def userid_for_unionid(self, unionid: str) -> UserLink:
        """Map a unionid to the corp's userid; a follower with no user record is unlinked, not an error."""
        body = self.call(API_USERID, {"unionid": unionid}, accept=frozenset({NO_SUCH_USER}))
        if effective_errcode(body) == NO_SUCH_USER:
            return UserLink(None, None)
        # A success without a userid is not "no such user" (that is NO_SUCH_USER): it is an answer we cannot use.
        userid = text_field(API_USERID, body, "userid")
        contact = body.get("contactType")
        if contact is not None and (type(contact) is not int or contact not in CONTACT_TYPES):  # JSON true is no 1
            raise malformed(API_USERID, body, f"`contactType` {str(contact)[:20]!r} is neither 0 nor 1")
        return UserLink(userid, contact)
