"""What a cached credential is: its value and times, its kind (one type per pipeline, so a channel token can never
be passed where a corp token is expected), the one set of pipeline names, and the cache's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar


@dataclass(frozen=True)
class Credential:
    """A token or ticket as cached; `value` never goes into logs or responses (nor into its repr)."""

    value: str = field(repr=False)
    fingerprint: str
    expires_at: float
    fetched_at: float
    generation: int
    registration: str = ""


# Distinct types so a channel token can never be passed where a corp token belongs (mypy checks it).
class ChannelToken(Credential):
    """Access token from corpid + channelSecret, for /channel/* APIs."""


class CorpToken(Credential):
    """Access token from corpid + corpSecret, for /user/* and the corp ticket."""


class ChannelTicket(Credential):
    """JSAPI ticket from the channel token, for dd.config type 1."""


class AppToken(Credential):
    """Access token of a current-generation app (appKey + appSecret, api.dingtalk.com), for v1.0 and topapi calls."""


class AppTicket(Credential):
    """JSAPI ticket from the app token, for dd.config type 0."""


C = TypeVar("C", bound=Credential)


@dataclass(frozen=True)
class Pipeline:
    """One of a corp's credential pipelines, with the one set of names every part of the gateway uses for it.

    `key` names it in the store (`dtgw:v1:{CORPID}:channel:token`), in log lines and in metric labels; `name` in the
    support console and its API (`channel_token`); `app` is the app whose secret it comes from, which is how
    `flask corp check` names the token pipelines (`channel`, `corp`); `api` is the DingTalk API that fetches it.
    """

    key: str
    api: str

    @property
    def name(self) -> str:
        return self.key.replace(":", "_")

    @property
    def app(self) -> str:
        return self.key.partition(":")[0]


CHANNEL_TOKEN = Pipeline("channel:token", "channel/get_channel_token")
CORP_TOKEN = Pipeline("corp:token", "gettoken")
CHANNEL_TICKET = Pipeline("channel:ticket", "channel/get_channel_jsapi_ticket")
PIPELINES = (CHANNEL_TOKEN, CORP_TOKEN, CHANNEL_TICKET)  # in the order the console lists them
# A current-generation app's (dingtalk-oapi.md §7.2); not yet listed by the console.
APP_TOKEN = Pipeline("app:token", "v1.0/oauth2/accessToken")
APP_TICKET = Pipeline("app:ticket", "v1.0/oauth2/jsapiTickets")
APP_PIPELINES = (APP_TOKEN, APP_TICKET)


@dataclass(frozen=True)
class CacheSettings:
    """Timing knobs, from the app config."""

    margin: int = 300
    jitter: int = 30
    lock_wait: float = 3.0
    lock_ttl: float = 2.0  # renewed every third of it while the fetch runs; a crashed holder's frees itself soon
    fail_ttl: int = 30
    poll: float = 0.05


Fetch = Callable[[], tuple[str, int | None]]
