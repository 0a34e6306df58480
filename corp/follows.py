"""Cache of a service window's follow statuses (`--require-follow`), so a returning follower costs one upstream
call, not two.

The contract bounds it: an answer is kept at most GATEWAY_FOLLOW_CACHE_TTL (≤ 60 s), and follow/unfollow events
(HTTP push or Stream) overwrite it at once, so an unfollow takes effect on the next login.
"""

from __future__ import annotations

import redis

from kit.keys import corp_key

FOLLOWED, UNFOLLOWED = "1", "0"


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
