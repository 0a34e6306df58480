"""The base of the per-corp API clients: wechatpy's client/API split, without its shared mutable state.

A client is built for one registration of one app of a corp (corpid + that app's secret) and holds only what
every call with it needs: the registration, the upstream and the cache of the app's access token. What a call
learns about a person is returned, never stored on the client, so one client serves every thread.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol

from oapi.credentials import Pipeline
from oapi.errcodes import expires_in, text_field
from oapi.tokens import C, CredentialCache, Credentials, with_token
from oapi.upstream import Upstream


class App(Protocol):
    """A registration the client calls DingTalk for: corp/registry.py's Corp is one. A Protocol, so oapi knows
    nothing of the registry that stores it."""

    @property
    def corpid(self) -> str: ...


class AppClient(Generic[C]):
    """Calls made with one app's access token; a subclass names the token's pipeline and how its API takes the
    secret, and says which of the registration's secrets is the app's."""

    token_pipeline: ClassVar[Pipeline]
    secret_param: ClassVar[str]  # the token API's parameter for the secret
    corp: App

    def __init__(self, corp: App, kind: type[C], upstream: Upstream, credentials: Credentials) -> None:
        self.corp = corp
        self._upstream = upstream
        self.token: CredentialCache[C] = credentials.cache(
            corp.corpid, self.token_pipeline.key, kind, self._fetch_token
        )

    def secret(self) -> str:
        """The app's secret, from the registration."""
        raise NotImplementedError

    def _fetch_token(self) -> tuple[str, int | None]:
        return self.fetch_token(self._upstream, self.corp.corpid, self.secret())

    @classmethod
    def fetch_token(cls, upstream: Upstream, corpid: str, secret: str) -> tuple[str, int | None]:
        """Fetch an access token with `secret`, past every cache: the token cache's fetch, and `flask corp check`'s."""
        api = cls.token_pipeline.api
        body = upstream.call(api, {"corpid": corpid, cls.secret_param: secret}, corpid=corpid, token_fetch=True)
        return text_field(api, body, "access_token"), expires_in(api, body)

    def call(
        self, api: str, params: dict[str, str], *, idempotent: bool = True, accept: frozenset[int] = frozenset()
    ) -> dict[str, Any]:
        """Call `api` with the app's access token (refreshed and retried once if DingTalk refuses it)."""

        def attempt(token: C) -> dict[str, Any]:
            return self._upstream.call(
                api,
                {"access_token": token.value, **params},
                corpid=self.corp.corpid,
                idempotent=idempotent,
                accept=accept,
            )

        return with_token(self.token, attempt)
