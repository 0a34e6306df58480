"""The one shape every typed error has, whichever floor raises it: a message, a hint for the person who reads it,
DingTalk's errcode (an int from oapi, a string code from api.dingtalk.com's v1.0) and errmsg where it said
something, and a Retry-After where waiting helps.

`oapi.errors` (DingTalk's failures) and `gateway.errors` (the gateway's own) both build on it, so the web layer
renders either without knowing where it came from; which contract status and code each class gets is decided in
one place, `gateway.errors.contract_of`.
"""

from __future__ import annotations


class Failure(Exception):
    """Base of every error the gateway reports to a caller."""

    default_hint = "An unexpected error; the request id links to the server log."
    default_retry_after: int | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        errcode: int | str | None = None,
        errmsg: str | None = None,
        retry_after: int | None = None,
        upstream_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
        self.errcode = errcode
        self.errmsg = errmsg
        self.retry_after = retry_after or self.default_retry_after
        self.upstream_status = upstream_status  # the HTTP status of a v1.0 error (its errcode is a string code)
