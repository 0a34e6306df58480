"""A current-generation app's pipelines (app token, app JSAPI ticket; dingtalk-oapi.md §7.2) and the calls that
need its token: the client of an internal (employee micro-app) or service-window app, one per registration.

Like oapi/client.py's clients it holds only what every call needs (the registration, the two HTTP clients, the two
caches); what a call learns about a person is returned. Its credentials have their own types (`AppToken`,
`AppTicket`) and keys (`app:token`, `app:ticket`), so they cannot be mixed up with a channel or corp credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from oapi.client import App
from oapi.corp import CONTACT_TYPES, NO_SUCH_USER, UserLink
from oapi.credentials import APP_TICKET, APP_TOKEN, AppTicket, AppToken
from oapi.errcodes import effective_errcode, expires_in, malformed, text_field
from oapi.openapi import OpenApi
from oapi.tokens import CredentialCache, Credentials, with_token
from oapi.upstream import Upstream

API_USER_INFO = "topapi/v2/user/getuserinfo"
API_BY_UNIONID = "topapi/user/getbyunionid"
API_FOLLOW_STATUS = "v1.0/link/followers/statuses"
FOLLOWED = "FOLLOWED"


class CurrentApp(App, Protocol):
    """A registration of a current-generation app: its org's corpid (a virtual org's for a service window), appKey
    (the page's clientId) and appSecret."""

    @property
    def app_key(self) -> str: ...

    @property
    def app_secret(self) -> str: ...


@dataclass(frozen=True)
class AppUser:
    """Who an app's auth code belongs to, in the app's org (topapi/v2/user/getuserinfo's `result`)."""

    userid: str
    unionid: str
    associated_unionid: str
    name: str
    sys: bool
    sys_level: int


class CurrentAppClient:
    """Calls made with one current-generation app's token."""

    def __init__(self, app: CurrentApp, openapi: OpenApi, upstream: Upstream, credentials: Credentials) -> None:
        self.app = app
        self._openapi = openapi
        self._upstream = upstream
        self.app_token: CredentialCache[AppToken] = credentials.cache(
            app.corpid, APP_TOKEN.key, AppToken, self._fetch_token
        )
        # A repeat fetch renews the same ticket (§7.2), so a fetch never kills the one cached.
        self.app_ticket: CredentialCache[AppTicket] = credentials.cache(
            app.corpid, APP_TICKET.key, AppTicket, self._fetch_ticket, fetch_invalidates=False
        )

    @property
    def corp(self) -> CurrentApp:
        """The registration (named as oapi/client.py's clients name theirs, so the runtime keeps both alike)."""
        return self.app

    def _fetch_token(self) -> tuple[str, int | None]:
        return self.fetch_token(self._openapi, self.app.corpid, self.app.app_key, self.app.app_secret)

    @staticmethod
    def fetch_token(openapi: OpenApi, corpid: str, app_key: str, app_secret: str) -> tuple[str, int | None]:
        """Fetch an app token with appKey + appSecret, past every cache."""
        api = APP_TOKEN.api
        # Idempotent (a repeat returns the same token), so a 5xx is retried too.
        credentials = {"appKey": app_key, "appSecret": app_secret}
        body = openapi.call(api, credentials, corpid=corpid, app_key=app_key, token_fetch=True, idempotent=True)
        return text_field(api, body, "accessToken"), expires_in(api, body, "expireIn")

    def _fetch_ticket(self) -> tuple[str, int | None]:
        api = APP_TICKET.api

        def attempt(token: AppToken) -> dict[str, Any]:
            # Idempotent: a repeat renews the same ticket (§7.2), so a 5xx is retried too.
            app = self.app
            return self._openapi.call(
                api, {}, corpid=app.corpid, app_key=app.app_key, token=token.value, idempotent=True
            )

        body = with_token(self.app_token, attempt)
        return text_field(api, body, "jsapiTicket"), expires_in(api, body, "expireIn")

    def user_for_code(self, code: str) -> AppUser:
        """Exchange a code from dd.requestAuthCode for the person in the app's org (single use)."""

        def attempt(token: AppToken) -> dict[str, Any]:
            # Not idempotent: a read timeout must not resend a code DingTalk may already have spent.
            return self._upstream.call(
                API_USER_INFO,
                {"access_token": token.value},
                corpid=self.app.corpid,
                idempotent=False,
                json={"code": code},
            )

        body = with_token(self.app_token, attempt)
        result = body.get("result")
        if not isinstance(result, dict):
            raise malformed(API_USER_INFO, body, "no `result`")
        sys_level = result.get("sys_level", 0)
        if type(sys_level) is not int:
            raise malformed(API_USER_INFO, body, f"`sys_level` {str(sys_level)[:20]!r} is not a number")
        associated = result.get("associated_unionid")
        return AppUser(
            userid=text_field(API_USER_INFO, result, "userid"),
            unionid=text_field(API_USER_INFO, result, "unionid"),
            associated_unionid=associated if isinstance(associated, str) else "",
            name=str(result.get("name") or ""),
            sys=result.get("sys") is True,
            sys_level=sys_level,
        )

    def userid_for_unionid(self, unionid: str) -> UserLink:
        """Map a unionid to this app's org's userid (topapi/user/getbyunionid); nobody there is unlinked, not an
        error. Used with the real org's internal app to map a service window's followers (§7.4)."""

        def attempt(token: AppToken) -> dict[str, Any]:
            return self._upstream.call(
                API_BY_UNIONID,
                {"access_token": token.value},
                corpid=self.app.corpid,
                idempotent=True,  # a lookup: resending it spends nothing
                json={"unionid": unionid},
                accept=frozenset({NO_SUCH_USER}),
            )

        body = with_token(self.app_token, attempt)
        if effective_errcode(body) == NO_SUCH_USER:
            return UserLink(None, None)
        result = body.get("result")
        if not isinstance(result, dict):
            raise malformed(API_BY_UNIONID, body, "no `result`")
        contact = result.get("contact_type")
        if contact is not None and (type(contact) is not int or contact not in CONTACT_TYPES):
            raise malformed(API_BY_UNIONID, body, f"`contact_type` {str(contact)[:20]!r} is neither 0 nor 1")
        return UserLink(text_field(API_BY_UNIONID, result, "userid"), contact)

    def follows(self, userid: str) -> bool:
        """Whether a member of this service window's virtual org follows it (/v1.0/link/followers/statuses).

        Asked with the window app's own token, so without `accountId` (§7.4: a service-window app must not pass it).
        """
        api = API_FOLLOW_STATUS

        def attempt(token: AppToken) -> dict[str, Any]:
            app = self.app
            return self._openapi.call(
                api,
                {},
                corpid=app.corpid,
                app_key=app.app_key,
                token=token.value,
                idempotent=True,
                query={"userId": userid},
            )

        body = with_token(self.app_token, attempt)
        result = body.get("result")
        status = result.get("status") if isinstance(result, dict) else None
        if not isinstance(status, str):
            raise malformed(api, body, "no `result.status`")
        return status == FOLLOWED
