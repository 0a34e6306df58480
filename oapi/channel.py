"""The channel-token pipelines (token and JSAPI ticket) and the calls that need the channel token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from oapi.errcodes import expires_in, text_field
from oapi.tokens import ChannelTicket, ChannelToken, Credentials, with_token
from oapi.upstream import Upstream


class ChannelApp(Protocol):
    """The registration this client calls DingTalk for (corpid + channelSecret): corp/registry.py's
    Corp is one. A Protocol, so oapi knows nothing of the registry that stores it."""

    @property
    def corpid(self) -> str: ...

    @property
    def channel_secret(self) -> str: ...


@dataclass(frozen=True)
class Follower:
    """Who a follower's auth code belongs to."""

    openid: str
    unionid: str


class ChannelClient:
    """Calls made with corpid + channelSecret."""

    def __init__(self, corp: ChannelApp, upstream: Upstream, credentials: Credentials) -> None:
        self.corp = corp
        self._upstream = upstream
        self.token = credentials.cache(corp.corpid, "channel:token", ChannelToken, self._fetch_token)
        # Design as if a ticket fetch kills the previous ticket (dingtalk-oapi.md §2).
        self.ticket = credentials.cache(
            corp.corpid, "channel:ticket", ChannelTicket, self._fetch_ticket, fetch_invalidates=True
        )

    def _fetch_token(self) -> tuple[str, int | None]:
        body = self._upstream.call(
            "channel/get_channel_token",
            {"corpid": self.corp.corpid, "channel_secret": self.corp.channel_secret},
            corpid=self.corp.corpid,
            token_fetch=True,
        )
        api = "channel/get_channel_token"
        return text_field(api, body, "access_token"), expires_in(api, body)

    def _fetch_ticket(self) -> tuple[str, int | None]:
        def call(token: ChannelToken) -> dict:
            # Not idempotent: a request resent after a read timeout may be carried out after the one that
            # answered, and kill the ticket we then store.
            return self._upstream.call(
                "channel/get_channel_jsapi_ticket",
                {"access_token": token.value},
                corpid=self.corp.corpid,
                idempotent=False,
            )

        body = with_token(self.token, call)
        api = "channel/get_channel_jsapi_ticket"
        return text_field(api, body, "ticket"), expires_in(api, body)

    def follower_for_code(self, code: str) -> Follower:
        """Exchange a follower's single-use auth code for openid and unionid."""

        def call(token: ChannelToken) -> dict:
            # Not idempotent: a read timeout must not resend a code DingTalk may already have spent.
            return self._upstream.call(
                "channel/user/get_by_code",
                {"access_token": token.value, "code": code},
                corpid=self.corp.corpid,
                idempotent=False,
            )

        body = with_token(self.token, call)
        api = "channel/user/get_by_code"
        return Follower(openid=text_field(api, body, "openid"), unionid=text_field(api, body, "unionid"))
