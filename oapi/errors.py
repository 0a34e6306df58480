"""What can go wrong talking to DingTalk, as oapi's own exception tree (no HTTP statuses: the web layer maps these
to the contract in `gateway.errors.contract_of`).

    OapiError
    ├── UpstreamError             DingTalk said no; the caller cannot fix it (see errcode)
    │   ├── CodeInvalid           the auth code is unknown, used or expired
    │   └── TokenInvalid          33001/40001/40014/42001, v1.0 InvalidAuthentication: refresh once, then give up
    ├── UpstreamUnavailable       DingTalk down, timing out or busy (-1, v1.0 429); sets retry_after
    │   ├── RateLimited           45009/90002/90005/90006/90018, v1.0 Qps*/Qpm*, the egress-IP block
    │   ├── QueueFull             the gateway's own pacing: no call slot within the wait (oapi/pacing.py)
    │   └── LockTimeout           another worker's refresh did not finish in time
    └── RegistrationGone          the corp whose secrets fetched a credential is no longer registered

Foreign exceptions are wrapped where they enter (`raise UpstreamUnavailable(...) from e`).
"""

from __future__ import annotations

from kit.errors import Failure


class OapiError(Failure):
    """Base of oapi's errors."""


class UpstreamError(OapiError):
    default_hint = "DingTalk refused the call; see `dingtalk.errcode`."


class CodeInvalid(UpstreamError):
    default_hint = "The auth code is unknown, used or expired: the page must request a new code."


class TokenInvalid(UpstreamError):
    """The access token was refused; the caller refreshes once and retries once."""


class UpstreamUnavailable(OapiError):
    default_hint = "DingTalk is unreachable or busy; retry after the number of seconds in Retry-After."
    default_retry_after = 1


class RateLimited(UpstreamUnavailable):
    default_hint = "DingTalk rate-limited this corp and API; the gateway backs off for everyone until it clears."


class QueueFull(UpstreamUnavailable):
    """More calls of one API for one corp are queued than DingTalk's per-second limit serves within the wait."""

    default_hint = (
        "Many sign-ins for this corp arrived at once; DingTalk serves about 20 per second per API, and the gateway "
        "queues them in order for up to GATEWAY_UPSTREAM_MAX_WAIT seconds. Retry after the seconds in Retry-After."
    )


class LockTimeout(UpstreamUnavailable):
    default_hint = "Another worker is refreshing this credential and did not finish in time; retry shortly."


class RegistrationGone(OapiError):
    """The registration a credential belonged to was removed while it was being fetched."""

    default_hint = "Register the corp with `flask corp add CORPID …`, or check the corpid in the page's URL."
