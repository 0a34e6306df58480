"""The HTTP client for api.dingtalk.com (the v1.0 API, dingtalk-oapi.md §7.1): JSON bodies, the token in the
`x-acs-dingtalk-access-token` header (never the query), errors as non-2xx statuses with a string `code`.

It shares the oapi client's pooled sessions, timeout, pacing and backoff (oapi/upstream.py, oapi/pacing.py,
oapi/backoff.py): calls are paced per app and API; a `Forbidden.AccessDenied.Qps*`/`Qpm*` opens the same
store-kept window as a 90018, per app and API, which every worker honours (paced calls queue behind it); the
egress-IP block is the same global one. 429 `systemBusy` (and a 5xx, for an idempotent call) is retried here at
most `busy_retries` times; the rest become oapi's typed errors (oapi/errcodes.classify_v1).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from oapi.errcodes import classify_v1, v1_code, v1_retryable
from oapi.errors import RateLimited
from oapi.metrics import UPSTREAM_CALLS
from oapi.upstream import Upstream

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-acs-dingtalk-access-token"


class OpenApi:
    """Calls api.dingtalk.com endpoints and returns successful bodies, or raises oapi's typed errors."""

    def __init__(self, base_url: str, upstream: Upstream) -> None:
        self.base_url = base_url.rstrip("/")
        self._upstream = upstream

    def call(
        self,
        api: str,
        body: dict[str, Any],
        *,
        corpid: str,
        app_key: str,
        token: str | None = None,
        token_fetch: bool = False,
        idempotent: bool = False,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST `body` to `api` (e.g. `v1.0/oauth2/accessToken`) with `token` in the header; return the 2xx body.
        With `query`, GET `api` with that query instead (the body is then unused: the read APIs take none).

        The backoff is kept per app and API (`app_key` + `api`) under the corp, so the support console lists it with
        the corp's others. `idempotent` allows retrying a 5xx; a read timeout is never resent (a POST).
        """
        backoff, pacer = self._upstream.backoff, self._upstream.pacer
        scope = f"{app_key}:{api}"
        probe = backoff.check(corpid, scope, paced=pacer.on)
        requeued = False
        while True:
            status, answer = 0, dict[str, Any]()
            for attempt in range(self._upstream.busy_retries + 1):
                # Every attempt is a call DingTalk counts: each waits for its slot (oapi/pacing.py).
                pacer.wait_turn(corpid, scope, api=api, backoff_key=backoff.window_key(corpid, scope))
                status, answer = self._send(api, body, query, token=token, corpid=corpid, idempotent=idempotent)
                if probe:  # this call was the global IP block's probe, and DingTalk answered in its own shape
                    probe = False
                    if backoff.lift_ip_block():
                        log.warning("dingtalk %s answered the IP-block probe: calls of every corp resume", api)
                if not v1_retryable(status, answer, idempotent=idempotent) or attempt == self._upstream.busy_retries:
                    break
                time.sleep(0.05 * 2**attempt)
            error = classify_v1(api, status, answer, token_fetch=token_fetch)
            if error is None:
                return answer
            if isinstance(error, RateLimited):
                error.retry_after = backoff.trip(corpid, scope, paced=pacer.on)
                if pacer.on and not requeued:
                    # Refused before it was carried out: queue once more behind the pause (oapi/upstream.py's call).
                    requeued = True
                    continue
            log.warning("dingtalk %s corp=%s app=%s status=%s code=%s", api, corpid, app_key, status, error.errcode)
            raise error

    def _send(
        self,
        api: str,
        body: dict[str, Any],
        query: dict[str, str] | None,
        *,
        token: str | None,
        corpid: str,
        idempotent: bool,
    ) -> tuple[int, dict[str, Any]]:
        headers = {TOKEN_HEADER: token} if token is not None else {}
        url = f"{self.base_url}/{api}"
        send = self._upstream.send
        if query is None:
            status, answer = send(api, "POST", url, corpid=corpid, idempotent=idempotent, json=body, headers=headers)
        else:
            status, answer = send(api, "GET", url, corpid=corpid, idempotent=idempotent, params=query, headers=headers)
        ok = 200 <= status < 300
        # A success is a JSON object; an error carries its code. Anything else (HTML, {"status":1111}) is the
        # egress-IP block or not DingTalk at all.
        # The block's JSON may come with any status, 200 included, so it is recognised by its body first.
        if not isinstance(answer, dict) or answer.get("status") == 1111 or (not ok and not v1_code(status, answer)):
            self._upstream.blocked(api, answer, status=status, base="DINGTALK_OPENAPI_BASE")
        UPSTREAM_CALLS.labels(api, v1_code(status, answer) or str(status)).inc()
        return status, answer
