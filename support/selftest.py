"""The console's credential self-test (`flask corp check`'s checks): kind channel, both tokens fetched live; the
current-generation kinds, the app token and ticket live and their usual mistakes; each mistake named."""

from __future__ import annotations

from typing import Any

from corp.check import check_corp
from corp.check_apps import check_app
from corp.runtime import Runtime
from gateway.errors import TooManyRequests
from kit.keys import corp_key


class SelfTestCooldown(TooManyRequests):
    """The console's own pause between self-tests of one corp (DingTalk is not involved: 429, not 503)."""

    default_hint = (
        "The self-test fetches tokens live, which DingTalk throttles; it runs at most once per corp every few "
        "seconds. Wait the seconds in Retry-After."
    )


def self_test(rt: Runtime, corpid: str, *, pause: int) -> dict[str, Any]:
    """Fetch the corp's credentials live (not from the cache) and name the typical mistakes.

    At most one run per corp per `pause` seconds (GATEWAY_SUPPORT_SELFTEST_COOLDOWN; 0: no pause): each run
    fetches tokens, which DingTalk throttles. A line that could not be checked (`skipped`) is no failure; the agent
    id is left to `flask corp check` (the trace shows what pages reported).
    """
    corp = rt.corp(corpid)
    key = corp_key(corpid, "support", "selftest")
    if pause > 0 and not rt.store.set(key, "1", nx=True, ex=pause):
        left = max(1, int(rt.store.ttl(key)))
        raise SelfTestCooldown(f"A self-test of corp {corpid} ran moments ago; try again in {left} s", retry_after=left)
    checks = check_app(rt, corp, agent=False) if corp.current else check_corp(rt.upstream, corp)
    results = [r.as_dict() for r in checks]
    return {
        "corpid": corpid,
        "kind": corp.kind,
        "ok": all(r["ok"] or r["skipped"] for r in results),
        "results": results,
    }
