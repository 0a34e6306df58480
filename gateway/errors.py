"""The gateway's own exception tree; each class knows its HTTP status and contract error code. DingTalk's
failures are oapi's own tree (`oapi/errors.py`); `contract_of` gives any of them its status and code, so the one
error handler (`web/errors.py`) renders both.

    Failure (kit/errors.py)
    ├── GatewayError                  500 internal_error
    │   ├── InvalidRequest            400 invalid_request
    │   │   └── PayloadTooLarge       413 invalid_request
    │   ├── NotFound                  404 not_found
    │   ├── MethodNotAllowed          405 method_not_allowed
    │   ├── UnknownCorp               404 unknown_corp
    │   ├── AgentMismatch             400 agent_mismatch
    │   ├── UrlNotAllowed             403 url_not_allowed
    │   ├── NotFollowing              403 not_following       (--require-follow, the person does not follow)
    │   ├── MappingUnavailable        502 upstream_error      (--map-via names no registered internal app)
    │   ├── Unauthorized              401 unauthorized
    │   ├── TooManyRequests           429 rate_limited        (our own cooldown or lockout; Retry-After)
    │   ├── SecretsUnreadable         500 internal_error      (sealed under another GATEWAY_SECRET_KEY)
    │   ├── IssuerUnset               500 internal_error      (OpenID Connect outside sandbox mode, no GATEWAY_ISSUER)
    │   ├── SignatureInvalid          403 signature_invalid
    │   ├── DecryptFailed             400 decrypt_failed
    │   └── StoreUnavailable          503 store_unavailable   (Redis unreachable, full or read-only; Retry-After)
    └── OapiError (oapi/errors.py)
        ├── UpstreamError             502 upstream_error
        │   ├── CodeInvalid           401 code_invalid
        │   └── TokenInvalid          502 upstream_error
        ├── UpstreamUnavailable       503 upstream_unavailable (Retry-After)
        │   ├── RateLimited           503 upstream_unavailable
        │   ├── QueueFull             503 upstream_unavailable (no paced call slot within the wait)
        │   └── LockTimeout           503 upstream_unavailable
        └── RegistrationGone          404 unknown_corp

Foreign exceptions are wrapped where they enter (`raise UpstreamUnavailable(...) from e`), so the one error
handler only ever sees this tree.
"""

from __future__ import annotations

from typing import Any

from gateway.trace import reference_of
from kit.errors import Failure
from oapi.errors import CodeInvalid, OapiError, RegistrationGone, UpstreamError, UpstreamUnavailable


class GatewayError(Failure):
    """Base of the gateway's own errors."""

    status = 500
    code = "internal_error"


# oapi's errors in the contract, most specific class first.
_OAPI_CONTRACT: tuple[tuple[type[OapiError], int, str], ...] = (
    (CodeInvalid, 401, "code_invalid"),
    (UpstreamError, 502, "upstream_error"),
    (UpstreamUnavailable, 503, "upstream_unavailable"),
    (RegistrationGone, 404, "unknown_corp"),
)


def contract_of(error: Failure) -> tuple[int, str]:
    """The contract's HTTP status and error code for any typed error."""
    if isinstance(error, GatewayError):
        return error.status, error.code
    for kind, status, code in _OAPI_CONTRACT:
        if isinstance(error, kind):
            return status, code
    return 500, "internal_error"


def envelope(error: Failure, request_id: str | None = None) -> dict[str, Any]:
    """The contract's error envelope for any typed error."""
    body: dict[str, Any] = {"code": contract_of(error)[1], "message": error.message, "hint": error.hint}
    if isinstance(error.errcode, str):  # the v1.0 API's own shape (gateway-contract.md)
        body["dingtalk"] = {"status": error.upstream_status, "code": error.errcode, "message": error.errmsg or ""}
    elif error.errcode is not None:
        body["dingtalk"] = {"errcode": error.errcode, "errmsg": error.errmsg or ""}
    if request_id:
        body["request_id"] = request_id
        # The short code the page shows the person, for support to find the attempt with (issue 22).
        body["reference"] = reference_of(request_id)
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


class NotFollowing(GatewayError):
    status = 403
    code = "not_following"
    default_hint = "This service window admits its followers only: follow it in DingTalk, then open the page again."


class MappingUnavailable(GatewayError):
    """A service window's `--map-via` names no registered internal app: the gateway's configuration, not the
    person's, so the caller cannot fix it (the contract's upstream_error)."""

    status = 502
    code = "upstream_error"
    default_hint = (
        "Register the real org named by --map-via with `flask corp add REALCORPID --kind internal …`, "
        "then run `flask corp check` for both."
    )


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    default_hint = "Send the admin token as `Authorization: Bearer …`."


class TooManyRequests(GatewayError):
    """The gateway's own cooldown or lockout (not DingTalk's): wait `Retry-After` seconds."""

    status = 429
    code = "rate_limited"
    default_hint = "Too many attempts; wait the number of seconds in Retry-After."
    default_retry_after = 1


class SecretsUnreadable(GatewayError):
    """A corp's sealed secrets do not open: GATEWAY_SECRET_KEY is not the key they were sealed with."""

    default_hint = (
        "GATEWAY_SECRET_KEY differs from the key this corp's secrets were sealed with: restore the old key, "
        "or register the corp again with `flask corp add`."
    )


class IssuerUnset(GatewayError):
    """The OpenID Connect provider needs its public base URL, and outside sandbox mode it is not guessed from the
    request: relying parties compare it with `iss` character for character."""

    default_hint = (
        "Set GATEWAY_ISSUER to the gateway's public base URL (https://login.example.com), the same in every worker, "
        "then restart it."
    )


class SignatureInvalid(GatewayError):
    status = 403
    code = "signature_invalid"
    default_hint = "Check the callback token registered for this corp and the sender's clock."


class DecryptFailed(GatewayError):
    status = 400
    code = "decrypt_failed"
    default_hint = "Check the EncodingAESKey and receiver key (corpId, appKey or suiteKey) registered for this corp."


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"
    default_hint = "The gateway's store (Redis) is unreachable; requests recover by themselves when it is back."
    default_retry_after = 1
