"""The channel-token pipelines (token and JSAPI ticket) and the calls that need the channel token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from oapi.client import App, AppClient
from oapi.credentials import CHANNEL_TICKET, CHANNEL_TOKEN, ChannelTicket, ChannelToken
from oapi.errcodes import expires_in, text_field
from oapi.tokens import Credentials
from oapi.upstream import Upstream

API_FOLLOWER = "channel/user/get_by_code"


class ChannelApp(App, Protocol):
    """A registration with this app's secret (corpid + channelSecret)."""

    @property
    def channel_secret(self) -> str: ...


@dataclass(frozen=True)
class Follower:
    """Who a follower's auth code belongs to."""

    openid: str
    unionid: str


class ChannelClient(AppClient[ChannelToken]):
    """Calls made with corpid + channelSecret."""

    token_pipeline = CHANNEL_TOKEN
    secret_param = "channel_secret"
    corp: ChannelApp

    def __init__(self, corp: ChannelApp, upstream: Upstream, credentials: Credentials) -> None:
        super().__init__(corp, ChannelToken, upstream, credentials)
        # Design as if a ticket fetch kills the previous ticket (dingtalk-oapi.md §2).
        self.ticket = credentials.cache(
            corp.corpid, CHANNEL_TICKET.key, ChannelTicket, self._fetch_ticket, fetch_invalidates=True
        )

    def secret(self) -> str:
        return self.corp.channel_secret

    def _fetch_ticket(self) -> tuple[str, int | None]:
        # Not idempotent: a request resent after a read timeout may be carried out after the one that answered,
        # and kill the ticket we then store.
        api = CHANNEL_TICKET.api
        body = self.call(api, {}, idempotent=False)
        return text_field(api, body, "ticket"), expires_in(api, body)

    def follower_for_code(self, code: str) -> Follower:
        """Exchange a follower's single-use auth code for openid and unionid."""
        # Not idempotent: a read timeout must not resend a code DingTalk may already have spent.
        body = self.call(API_FOLLOWER, {"code": code}, idempotent=False)
        return Follower(
            openid=text_field(API_FOLLOWER, body, "openid"), unionid=text_field(API_FOLLOWER, body, "unionid")
        )
