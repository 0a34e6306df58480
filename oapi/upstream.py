"""The HTTP client for DingTalk's oapi: timeouts, library retries, errcode -> typed errors, shared backoff.

Knows DingTalk, knows nothing of Flask. One Upstream per app holds the pooled sessions; per-corp clients
(channel.api.ChannelClient, corp.api.CorpClient) call through it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import redis
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from oapi.backoff import Backoff
from oapi.errcodes import SYSTEM_BUSY, classify, effective_errcode
from oapi.errors import RateLimited, UpstreamUnavailable
from oapi.metrics import UPSTREAM_CALLS, UPSTREAM_LATENCY
from oapi.pacing import Pacer

log = logging.getLogger(__name__)


def _session(read_retries: int, pool: int) -> requests.Session:
    # Connection errors never reached DingTalk, so they are always safe to retry; read timeouts are only
    # retried for idempotent calls (an auth code must not be spent twice, nor a ticket fetched twice: the resent
    # fetch may be carried out last and kill the ticket the gateway stored).
    retry = Retry(
        total=2,
        connect=2,
        read=read_retries,
        status=0,
        other=0,
        backoff_factor=0.1,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Upstream:
    """Calls DingTalk oapi endpoints and returns successful bodies, or raises the gateway's typed errors."""

    def __init__(
        self,
        base_url: str,
        store: redis.Redis,
        *,
        timeout: float = 5.0,
        busy_retries: int = 3,
        pool: int = 64,
        pacer: Pacer | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.busy_retries = busy_retries
        self.backoff = Backoff(store)
        # Shared by the v1.0 client (oapi/openapi.py); off unless given (the runtime gives one, rate from settings).
        self.pacer = pacer or Pacer(store, rate=0, max_wait=0, max_queued=0)
        self._idempotent = _session(read_retries=2, pool=pool)
        self._once = _session(read_retries=0, pool=pool)

    def close(self) -> None:
        """Close the pooled connections (app teardown)."""
        self._idempotent.close()
        self._once.close()

    def call(
        self,
        api: str,
        params: dict[str, str],
        *,
        corpid: str,
        token_fetch: bool = False,
        idempotent: bool = True,
        accept: frozenset[int] = frozenset(),
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """GET `api` with `params` (POST with a `json` body, as topapi wants); return the body when errcode is 0 (or in
        `accept`), else raise.

        Each attempt first waits for its slot in the corp's and API's pacing (oapi/pacing.py): a burst queues, in
        order, for at most the pacer's wait, and what does not fit gets QueueFull (503) before anything is sent.
        A rate-limit answer that gets through anyway queues the call once more, behind the pause it opens
        (oapi/backoff.py).

        `-1` (system busy) is retried here, at most `busy_retries` times with a short backoff. This is the one
        hand-rolled retry: -1 arrives as HTTP 200 with the errcode in the JSON body, and urllib3's Retry only sees
        statuses and connection errors. It applies to every call, single-use auth codes included: -1 is an answer,
        not silence, and DingTalk's guidance is to retry it (dingtalk-oapi.md §6, at most 3 times); should DingTalk
        have spent the code anyway, the retry gets 40078 and the page asks for a new code. Silence (a read timeout)
        is still never retried for a call that is not idempotent.
        """
        paced = self.pacer.on
        probe = self.backoff.check(corpid, api, paced=paced)
        requeued = False
        while True:
            body = self._attempts(api, params, corpid=corpid, idempotent=idempotent, json=json, probe=probe)
            probe = False
            errcode = effective_errcode(body)
            if errcode in accept:
                return body
            error = classify(api, body, token_fetch=token_fetch)
            if error is None:
                return body
            if isinstance(error, RateLimited):
                error.retry_after = self.backoff.trip(corpid, api, paced=paced)
                if paced and not requeued:
                    requeued = True
                    # DingTalk refused before carrying the call out (a code is not spent): queue once more, behind
                    # the pause just opened, rather than fail a person for someone else's share of the quota.
                    log.warning("dingtalk %s corp=%s errcode=%s: queued again", api, corpid, body.get("errcode"))
                    continue
            log.warning("dingtalk %s corp=%s errcode=%s", api, corpid, body.get("errcode"))
            raise error

    def _attempts(
        self,
        api: str,
        params: dict[str, str],
        *,
        corpid: str,
        idempotent: bool,
        json: dict[str, Any] | None,
        probe: bool,
    ) -> dict[str, Any]:
        """The call and its busy retries, each in a paced slot (DingTalk counts every one); the last answer."""
        body: dict[str, Any] = {}
        for attempt in range(self.busy_retries + 1):
            self.pacer.wait_turn(corpid, api, api=api, backoff_key=self.backoff.window_key(corpid, api))
            body = self._get(api, params, corpid=corpid, idempotent=idempotent, json=json)
            if probe:  # this call was the global IP block's probe, and DingTalk answered in its own shape
                probe = False
                if self.backoff.lift_ip_block():
                    log.warning("dingtalk %s answered the IP-block probe: calls of every corp resume", api)
            if effective_errcode(body) != SYSTEM_BUSY or attempt == self.busy_retries:
                break
            time.sleep(0.05 * 2**attempt)
        return body

    def session(self, *, idempotent: bool) -> requests.Session:
        """The pooled session for a call: read timeouts are resent only for an idempotent GET."""
        return self._idempotent if idempotent else self._once

    def send(self, api: str, method: str, url: str, *, corpid: str, idempotent: bool, **kwargs: Any) -> tuple[int, Any]:
        """One exchange with DingTalk, timed and counted: (HTTP status, the JSON answer or None).

        Shared by both API generations (the v1.0 client is oapi/openapi.py). A failure to get any answer is
        UpstreamUnavailable; what the answer means is for the caller to read.
        """
        started = time.perf_counter()
        try:
            resp = self.session(idempotent=idempotent).request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            UPSTREAM_CALLS.labels(api, "unreachable").inc()
            # The exception may carry the URL's query or the request (secrets, codes, tokens): never log or return
            # it.
            log.warning("dingtalk %s corp=%s unreachable: %s", api, corpid, type(e).__name__)
            raise UpstreamUnavailable(f"DingTalk did not answer {api} in time", retry_after=2) from None
        finally:
            UPSTREAM_LATENCY.labels(api).observe(time.perf_counter() - started)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, None

    def _get(
        self, api: str, params: dict[str, str], *, corpid: str, idempotent: bool, json: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = f"{self.base_url}/{api}"
        if json is None:
            status, body = self.send(api, "GET", url, corpid=corpid, idempotent=idempotent, params=params)
        else:
            status, body = self.send(api, "POST", url, corpid=corpid, idempotent=idempotent, params=params, json=json)
        if not isinstance(body, dict) or "errcode" not in body:
            self.blocked(api, body, status=status)
        UPSTREAM_CALLS.labels(api, str(body.get("errcode"))).inc()
        return body

    def blocked(self, api: str, body: Any, *, status: int, base: str = "DINGTALK_API_BASE") -> NoReturn:
        """Raise for a non-oapi answer: DingTalk's egress-IP block ({"status":1111,"wait":5} or an HTML page).

        The v1.0 client (oapi/openapi.py) calls it too: api.dingtalk.com answers a blocked IP the same way, and the
        block is one for every corp and both bases. `base` names the setting the hint asks to check.
        """
        wait = body.get("wait") if isinstance(body, dict) and body.get("status") == 1111 else None
        if isinstance(body, dict) and body.get("status") == 1111 or status in (200, 403, 429):
            UPSTREAM_CALLS.labels(api, "ip_block").inc()
            seconds = self.backoff.block_ip(int(wait) if isinstance(wait, int | float) else None)
            log.error("dingtalk %s: egress IP blocked, calls of every corp paused for up to %ss", api, seconds)
            explicit = isinstance(body, dict)
            error = self.backoff.ip_blocked(
                seconds * 1000,
                cause=f"DingTalk answered {api} with its IP-block answer. "
                if explicit
                else f"DingTalk answered {api} without JSON, which is how it answers a blocked IP. ",
                errcode=1111,
                errmsg="ip blocked",
            )
            if not explicit:
                error.hint += f" If this persists, check that {base} really points at DingTalk."
            raise error
        UPSTREAM_CALLS.labels(api, f"http_{status}").inc()
        raise UpstreamUnavailable(f"DingTalk answered {api} with HTTP {status} and no JSON", retry_after=2)
