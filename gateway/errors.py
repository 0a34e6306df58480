"""The gateway's one exception tree; each class knows its HTTP status and contract error code.

    GatewayError                      500 internal_error
    ├── InvalidRequest                400 invalid_request
    │   └── PayloadTooLarge           413 invalid_request
    ├── NotFound                      404 not_found
    ├── MethodNotAllowed              405 method_not_allowed
    ├── UnknownCorp                   404 unknown_corp
    ├── AgentMismatch                 400 agent_mismatch
    ├── UrlNotAllowed                 403 url_not_allowed
    ├── Unauthorized                  401 unauthorized
    ├── TooManyRequests               429 rate_limited        (our own cooldown or lockout; Retry-After)
    ├── SecretsUnreadable             500 internal_error      (sealed under another GATEWAY_SECRET_KEY)
    ├── SignatureInvalid              403 signature_invalid
    ├── DecryptFailed                 400 decrypt_failed
    ├── UpstreamError                 502 upstream_error      (DingTalk said no; the caller cannot fix it)
    │   ├── CodeInvalid               401 code_invalid        (auth code unknown, used or expired)
    │   └── TokenInvalid              502 upstream_error      (33001/40001/40014/42001: refresh once, then give up)
    └── UpstreamUnavailable           503 upstream_unavailable (sets Retry-After)
        ├── RateLimited                                        (45009/90002/90005/90006/90018, IP block)
        ├── LockTimeout                                        (a token refresh did not finish in time)
        └── StoreUnavailable          503 store_unavailable    (Redis unreachable, read-only or full)

Foreign exceptions are wrapped where they enter (`raise UpstreamUnavailable(...) from e`), so the one error
handler in app.py only ever sees this tree.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller."""

    status = 500
    code = "internal_error"
    default_hint = "An unexpected error; the request id links to the server log."

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        errcode: int | None = None,
        errmsg: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.errcode = errcode
        self.errmsg = errmsg
        self.retry_after = retry_after

    def to_dict(self, request_id: str | None = None) -> dict[str, Any]:
        """Render the contract's error envelope."""
        body: dict[str, Any] = {"code": self.code, "message": self.message, "hint": self.hint}
        if self.errcode is not None:
            body["dingtalk"] = {"errcode": self.errcode, "errmsg": self.errmsg or ""}
        if request_id:
            body["request_id"] = request_id
        return {"error": body}


class InvalidRequest(GatewayError):
    status = 400
    code = "invalid_request"
    default_hint = "Check the request's parameters against the API documentation."


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_hint = "The request body is larger than the gateway accepts."


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    default_hint = "Check the path; the gateway's routes are listed in the README."


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"
    default_hint = "Check the HTTP method for this path."


class UnknownCorp(GatewayError):
    status = 404
    code = "unknown_corp"
    default_hint = "Register the corp with `flask corp add CORPID …`, or check the corpid in the page's URL."


class AgentMismatch(GatewayError):
    status = 400
    code = "agent_mismatch"
    default_hint = (
        "The agentid is not the one registered for this corp (the usual cause of 52019); "
        "check the page's agentid against `flask corp list`."
    )


class UrlNotAllowed(GatewayError):
    status = 403
    code = "url_not_allowed"
    default_hint = "Only pages under the corp's registered origins are signed; add the origin with `flask corp add`."


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    default_hint = "Send the admin token as `Authorization: Bearer …`."


class TooManyRequests(GatewayError):
    """The gateway's own cooldown or lockout (not DingTalk's): wait `Retry-After` seconds."""

    status = 429
    code = "rate_limited"
    default_hint = "Too many attempts; wait the number of seconds in Retry-After."

    def __init__(self, message: str, *, retry_after: int | None = None, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after or 1, **kw)


class SecretsUnreadable(GatewayError):
    """A corp's sealed secrets do not open: GATEWAY_SECRET_KEY is not the key they were sealed with."""

    default_hint = (
        "GATEWAY_SECRET_KEY differs from the key this corp's secrets were sealed with: restore the old key, "
        "or register the corp again with `flask corp add`."
    )


class SignatureInvalid(GatewayError):
    status = 403
    code = "signature_invalid"
    default_hint = "Check the callback token registered for this corp and the sender's clock."


class DecryptFailed(GatewayError):
    status = 400
    code = "decrypt_failed"
    default_hint = "Check the EncodingAESKey and receiver key (corpId, appKey or suiteKey) registered for this corp."


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"
    default_hint = "DingTalk refused the call; see `dingtalk.errcode`."


class CodeInvalid(UpstreamError):
    status = 401
    code = "code_invalid"
    default_hint = "The auth code is unknown, used or expired: the page must request a new code."


class TokenInvalid(UpstreamError):
    """The access token was refused; the caller refreshes once and retries once."""


class UpstreamUnavailable(GatewayError):
    status = 503
    code = "upstream_unavailable"
    default_hint = "DingTalk is unreachable or busy; retry after the number of seconds in Retry-After."

    def __init__(self, message: str, *, retry_after: int | None = None, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after or 1, **kw)


class RateLimited(UpstreamUnavailable):
    default_hint = "DingTalk rate-limited this corp and API; the gateway backs off for everyone until it clears."


class LockTimeout(UpstreamUnavailable):
    default_hint = "Another worker is refreshing this credential and did not finish in time; retry shortly."


class StoreUnavailable(UpstreamUnavailable):
    code = "store_unavailable"
    default_hint = "The gateway's store (Redis) is unreachable; requests recover by themselves when it is back."
