"""The corp-token pipeline and the calls that need the corp token (never the channel token)."""

from __future__ import annotations

from dataclasses import dataclass

from corp.registry import Corp
from oapi.tokens import CorpToken, Credentials, with_token
from oapi.upstream import Upstream

NO_SUCH_USER = 60121


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

    def __init__(self, corp: Corp, upstream: Upstream, credentials: Credentials) -> None:
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
        return str(body["access_token"]), body.get("expires_in")

    def userid_for_unionid(self, unionid: str) -> UserLink:
        """Map a unionid to the corp's userid; a follower with no user record is unlinked, not an error."""

        def call(token: CorpToken) -> dict:
            return self._upstream.call(
                "user/getUseridByUnionid",
                {"access_token": token.value, "unionid": unionid},
                corpid=self.corp.corpid,
                accept=frozenset({NO_SUCH_USER}),
            )

        body = with_token(self.token, call)
        if int(body.get("errcode", 0)) == NO_SUCH_USER or not body.get("userid"):
            return UserLink(None, None)
        contact = body.get("contactType")
        return UserLink(str(body["userid"]), int(contact) if contact is not None else None)
