"""Cache of a service window's follow statuses (`--require-follow`), so a returning follower costs one upstream
call, not two.

The contract bounds it: an answer is kept at most GATEWAY_FOLLOW_CACHE_TTL (≤ 60 s), and follow/unfollow events
(HTTP push or Stream) overwrite it at once, so an unfollow takes effect on the next login.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from kit.keys import corp_key

FOLLOWED, UNFOLLOWED = "1", "0"
# A service window's follow events (dingtalk-oapi.md §7.4), each with `data: [{"userId", "name", "type",
# "timestamp"}]`, over HTTP push or Stream mode.
FOLLOW_EVENTS = {"official_account_follow": True, "official_account_unfollow": False}
_MAX_PEOPLE = 1000  # per event: bounds the work one push can cause


def follow_changes(event: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(userid, follows) for each person a follow or unfollow event names; [] for any other event."""
    followed = FOLLOW_EVENTS.get(str(event.get("EventType") or event.get("eventType") or ""))
    data = event.get("data")
    if followed is None or not isinstance(data, list):
        return []
    changes = []
    for item in data[:_MAX_PEOPLE]:
        userid = item.get("userId") if isinstance(item, dict) else None
        if isinstance(userid, str) and 0 < len(userid) <= 128:
            changes.append((userid, followed))
    return changes


class FollowCache:
    """Per-window follow statuses in the store, by the follower's virtual-org userid."""

    def __init__(self, store: redis.Redis, corpid: str, ttl: int) -> None:
        self._store = store
        self._corpid = corpid
        self._ttl = max(1, int(ttl))

    def _key(self, userid: str) -> str:
        return corp_key(self._corpid, "follow", userid)

    def get(self, userid: str) -> bool | None:
        """True (follows), False (does not), or None (not known here: ask DingTalk)."""
        raw = self._store.get(self._key(userid))
        return None if raw is None else raw == FOLLOWED

    def put(self, userid: str, followed: bool) -> None:
        self._store.set(self._key(userid), FOLLOWED if followed else UNFOLLOWED, ex=self._ttl)

    def apply(self, changes: list[tuple[str, bool]]) -> None:
        """Record what follow events said, so the next login sees it at once instead of after the TTL."""
        if not changes:
            return
        pipe = self._store.pipeline(transaction=False)
        for userid, followed in changes:
            pipe.set(self._key(userid), FOLLOWED if followed else UNFOLLOWED, ex=self._ttl)
        pipe.execute()
