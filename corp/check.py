"""The credential self-test behind `flask corp check` and the support console: both tokens, live, explained."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from corp.registry import Corp
from gateway.errors import GatewayError
from gateway.sealing import fingerprint
from oapi.hints import hint_for
from oapi.upstream import Upstream

_IP_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F:]{3,}:[0-9a-fA-F]{1,4})")


@dataclass(frozen=True)
class CheckResult:
    """One pipeline's verdict."""

    pipeline: str
    ok: bool
    errcode: int | None = None
    diagnosis: str = ""
    fingerprint: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fetch(upstream: Upstream, api: str, params: dict[str, str], corpid: str) -> tuple[str | None, GatewayError | None]:
    try:
        body = upstream.call(api, params, corpid=corpid, token_fetch=True)
    except GatewayError as e:
        return None, e
    return str(body.get("access_token", "")), None


def _diagnose(error: GatewayError, *, pipeline: str, swapped_works: bool, same_secret: bool) -> str:
    errcode = error.errcode
    if errcode == 60020:
        ip = _IP_RE.search(error.errmsg or "")
        where = f" Add {ip.group(1)} to the app's IP whitelist." if ip else " Add the gateway's egress IP."
        return "The gateway's IP is not on the app's whitelist." + where
    if errcode in (40001, 40089) and swapped_works:
        other = "channel secret" if pipeline == "corp" else "corp secret"
        return (
            f"The {pipeline} secret is wrong, but the registered {other} works here: the two secrets are "
            "swapped (a channel secret given as corp secret, or the reverse). Re-register them."
        )
    if errcode in (40001, 40089) and same_secret:
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
    plans = [
        ("corp", "gettoken", "corpsecret", corp.corp_secret, corp.channel_secret),
        ("channel", "channel/get_channel_token", "channel_secret", corp.channel_secret, corp.corp_secret),
    ]
    results: list[CheckResult] = []
    for pipeline, api, param, secret, other_secret in plans:
        token, error = _fetch(upstream, api, {"corpid": corp.corpid, param: secret}, corp.corpid)
        if error is None and token is not None:
            results.append(CheckResult(pipeline, True, 0, "OK", fingerprint(token)))
            continue
        if error is None:
            error = GatewayError("DingTalk answered without a token")
        swapped_works = False
        if error.errcode in (40001, 40089) and other_secret and other_secret != secret:
            # Try the other secret on this endpoint: the classic mix-up shows itself at once.
            swapped, _ = _fetch(upstream, api, {"corpid": corp.corpid, param: other_secret}, corp.corpid)
            swapped_works = swapped is not None
        results.append(
            CheckResult(
                pipeline,
                False,
                error.errcode,
                _diagnose(error, pipeline=pipeline, swapped_works=swapped_works, same_secret=other_secret == secret),
            )
        )
    return results
