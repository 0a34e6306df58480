"""The console's credential self-test: both tokens fetched live, the typical mistakes named (`flask corp check`)."""

from __future__ import annotations

from typing import Any

from corp.check import check_corp
from corp.runtime import Runtime
from gateway.errors import TooManyRequests
from kit.keys import corp_key


class SelfTestCooldown(TooManyRequests):
    """The console's own pause between self-tests of one corp (DingTalk is not involved: 429, not 503)."""

    default_hint = (
        "The self-test calls gettoken live, which DingTalk throttles; it runs at most once per corp every few "
        "seconds. Wait the seconds in Retry-After."
    )


def self_test(rt: Runtime, corpid: str, *, pause: int) -> dict[str, Any]:
    """Fetch both tokens live (not from the cache) and name the typical mistakes.

    At most one run per corp per `pause` seconds (GATEWAY_SUPPORT_SELFTEST_COOLDOWN; 0: no pause): each run
    calls gettoken, which DingTalk throttles.
    """
    corp = rt.corp(corpid)
    key = corp_key(corpid, "support", "selftest")
    if pause > 0 and not rt.store.set(key, "1", nx=True, ex=pause):
        left = max(1, int(rt.store.ttl(key)))
        raise SelfTestCooldown(f"A self-test of corp {corpid} ran moments ago; try again in {left} s", retry_after=left)
    results = [r.as_dict() for r in check_corp(rt.upstream, corp)]
    return {"corpid": corpid, "ok": all(r["ok"] for r in results), "results": results}
