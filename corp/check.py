"""The self-test behind `flask corp check` and the support console for kind channel (the legacy service window):
both tokens live, then (for the CLI) the channel ticket and the agent id as dd.config sees them, each failure
explained. The current-generation kinds are checked by corp/check_apps.py, with this module's CheckResult.

DingTalk has no server API that checks an agent id: its client does, when the page calls dd.config (52019, bad
agentId; dingtalk-oapi.md §4). So the check signs a dd.config for the corp's first origin with the channel ticket
and asks the DingTalk client's side to judge it where one answers (the simulator's `/_client/check_config`); against
DingTalk itself it reads what the corp's pages reported since the registration instead.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from corp.registry import Corp
from corp.runtime import Runtime
from gateway import trace
from kit.errors import Failure
from kit.sealing import fingerprint
from oapi.channel import ChannelClient
from oapi.client import AppClient
from oapi.corp import CorpClient
from oapi.credentials import CHANNEL_TOKEN, CORP_TOKEN
from oapi.hints import hint_for
from oapi.signing import normalize_url, sign_config
from oapi.upstream import Upstream

TOKEN_PIPELINES = (CORP_TOKEN.app, CHANNEL_TOKEN.app)  # what a check result names a token pipeline by
SECRET_REFUSED = frozenset({40001, 40089})  # gettoken's answers to a wrong secret (oapi/hints.py)
BAD_AGENT_ID = 52019
# Hosts that are DingTalk itself, where no client-side judge exists (and none is asked).
_DINGTALK_HOSTS = frozenset({"oapi.dingtalk.com"})

_IP_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F:]{3,}:[0-9a-fA-F]{1,4})")


@dataclass(frozen=True)
class CheckResult:
    """One pipeline's verdict."""

    pipeline: str
    ok: bool
    errcode: int | str | None = None  # a v1.0 code is a string
    diagnosis: str = ""
    fingerprint: str | None = None
    skipped: bool = False  # not checked (so not ok), but not a failure either; `diagnosis` says why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fetch(client: type[AppClient[Any]], upstream: Upstream, corpid: str, secret: str) -> tuple[str, Failure | None]:
    """A fresh token of `client`'s app fetched with `secret` (its fingerprint is shown), or the failure."""
    try:
        token, _ = client.fetch_token(upstream, corpid, secret)
    except Failure as e:
        return "", e
    return token, None


def not_whitelisted(errmsg: str | None) -> str:
    """What to do about an IP-whitelist refusal; DingTalk's message names the refused IP where it can."""
    ip = _IP_RE.search(errmsg or "")
    where = f" Add {ip.group(1)} to the app's IP whitelist." if ip else " Add the gateway's egress IP."
    return "The gateway's IP is not on the app's whitelist." + where


def _diagnose(error: Failure, *, pipeline: str, swapped_works: bool, same_secret: bool) -> str:
    errcode = error.errcode
    if errcode == 60020:
        return not_whitelisted(error.errmsg)
    if errcode in SECRET_REFUSED and swapped_works:
        other = "channel secret" if pipeline == CORP_TOKEN.app else "corp secret"
        return (
            f"The {pipeline} secret is wrong, but the registered {other} works here: the two secrets are "
            "swapped (a channel secret given as corp secret, or the reverse). Re-register them."
        )
    if errcode in SECRET_REFUSED and same_secret:
        return "The same secret was registered as corp secret and channel secret; they are different secrets."
    if errcode == 40089:
        return "Wrong corpid or secret: check CORPID and the " + pipeline + " secret in the developer console."
    if errcode == 40001:
        return "The " + pipeline + " secret was refused: copy it again from the developer console."
    if errcode is None:
        return error.message + ". " + error.hint
    return hint_for(errcode, error.message)


def check_corp(upstream: Upstream, corp: Corp) -> list[CheckResult]:
    """Fetch both tokens fresh (never from the cache) and explain any failure."""
    plans: list[tuple[type[AppClient[Any]], str, str]] = [
        (CorpClient, corp.corp_secret, corp.channel_secret),
        (ChannelClient, corp.channel_secret, corp.corp_secret),
    ]
    results: list[CheckResult] = []
    for client, secret, other_secret in plans:
        pipeline = client.token_pipeline.app
        token, error = _fetch(client, upstream, corp.corpid, secret)
        if error is None:
            results.append(CheckResult(pipeline, True, 0, "OK", fingerprint(token)))
            continue
        swapped_works = False
        if error.errcode in SECRET_REFUSED and other_secret and other_secret != secret:
            # Try the other secret on this endpoint: the classic mix-up shows itself at once.
            swapped_works = _fetch(client, upstream, corp.corpid, other_secret)[1] is None
        results.append(
            CheckResult(
                pipeline,
                False,
                error.errcode,
                _diagnose(error, pipeline=pipeline, swapped_works=swapped_works, same_secret=other_secret == secret),
            )
        )
    return results


def check_page_config(rt: Runtime, corp: Corp) -> list[CheckResult]:
    """The channel ticket (cached, or fetched once under the refresh lock) and the agent id, checked with it.

    The ticket is never fetched beside the cache: where a fetch invalidates the previous ticket, that would break
    every page signed with the cached one.
    """
    cache = rt.channel_client(corp).ticket
    cached = cache.peek()
    try:
        ticket = cached or cache.get()
    except Failure as e:
        diagnosis = _diagnose(e, pipeline=CHANNEL_TOKEN.app, swapped_works=False, same_secret=False)
        return [
            CheckResult("ticket", False, e.errcode, f"No channel ticket: {diagnosis}"),
            CheckResult("agent", False, None, "Not checked: it needs a channel ticket.", skipped=True),
        ]
    age = max(0, int(time.time() - ticket.fetched_at))
    how = f"cached, fetched {age} s ago" if cached is not None else "fetched now"
    return [
        CheckResult("ticket", True, 0, f"channel ticket fp={ticket.fingerprint} ({how})", ticket.fingerprint),
        check_agent(rt, corp, ticket.value),
    ]


def check_agent(rt: Runtime, corp: Corp, ticket: str) -> CheckResult:
    """The agent id, judged by DingTalk's client side with a dd.config signed for the corp's first origin with
    `ticket` (the channel ticket, `type: 1`; a current-generation app's own ticket, `type: 0`); where no client
    side answers, what the corp's pages reported."""
    url = normalize_url(corp.origins[0] + "/")
    config = sign_config(
        corpid=corp.corpid,
        agent_id=corp.agent_id,
        ticket=ticket,
        url=url,
        algorithm=corp.sign_hash,
        config_type=0 if corp.current else 1,
    )
    verdict = _client_verdict(rt.upstream, config)
    if verdict is None:
        return agent_from_page_reports(rt, corp)
    if verdict.get("ok") is True:
        return CheckResult("agent", True, 0, f"{corp.agent_id}: DingTalk accepted a dd.config signed for {url}")
    code = verdict.get("errorCode")
    errcode = code if isinstance(code, int) and not isinstance(code, bool) else None
    if errcode == BAD_AGENT_ID and not corp.current:
        diagnosis = (
            f"DingTalk refused agent id {corp.agent_id} for corp {corp.corpid}: register the service window's "
            "AgentId from the developer console (`flask corp add … --agent-id N`)."
        )
    elif errcode == BAD_AGENT_ID:
        said = str(verdict.get("errorMessage") or "")[:100]
        diagnosis = (
            f"DingTalk refused agent id {corp.agent_id} with type 0 for corp {corp.corpid} (DingTalk: {said}): "
            "register the AgentId of this app (appKey "
            f"{corp.app_key}) from its page in the developer console (`flask corp add … --agent-id N`)."
        )
    else:
        which = "the app's ticket" if corp.current else "the cached ticket"
        diagnosis = f"DingTalk refused a dd.config signed for {url} with {which}: {hint_for(errcode)}"
    return CheckResult("agent", False, errcode, diagnosis)


def _client_verdict(upstream: Upstream, config: dict[str, Any]) -> dict[str, Any] | None:
    """What the DingTalk client says of `config`, where the upstream has a client side to ask; else None."""
    if urlsplit(upstream.base_url).hostname in _DINGTALK_HOSTS:
        return None
    try:
        resp = requests.post(f"{upstream.base_url}/_client/check_config", json=config, timeout=upstream.timeout)
        body = resp.json()
    except (requests.RequestException, ValueError):
        return None
    if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        return None
    return body


def agent_from_page_reports(rt: Runtime, corp: Corp) -> CheckResult:
    """The agent id as the corp's pages reported it since the registration (52019), where no client side judges."""
    reports = [
        entry
        for entry in trace.recent(rt.store, corp.corpid, count=1000, outcome="config_error")
        if BAD_AGENT_ID in (entry.get("errcodes") or []) and float(entry.get("time", 0)) >= corp.registered_at
    ]
    if reports:
        return CheckResult(
            "agent",
            False,
            BAD_AGENT_ID,
            f"{len(reports)} page(s) reported {BAD_AGENT_ID} (bad agentId) since this registration: "
            + hint_for(BAD_AGENT_ID),
        )
    return CheckResult(
        "agent",
        False,
        None,
        f"{corp.agent_id}: not checkable from the server (DingTalk's client checks it in the page's dd.config); "
        f"no page has reported {BAD_AGENT_ID} (bad agentId) since this registration. Open a page in DingTalk to "
        "be sure.",
        skipped=True,
    )
