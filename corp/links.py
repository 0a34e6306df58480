"""Cache of unionid -> userid links, so a returning follower costs one upstream call, not two.

`link:<unionid>` holds the link; `link-by-user:<userid>` points back, so a callback that names userids
(user_leave_org, user_modify_org) can drop exactly the affected links.
"""

from __future__ import annotations

import json

import redis

from kit.keys import corp_key
from oapi.corp import UserLink

# An unlinked follower may be hired any day: recheck sooner than a linked one.
UNLINKED_TTL_CAP = 600
# After a leave/modify event, links for that userid are not cached for this long: a login already in flight
# when the event arrived would otherwise write back the link the event just dropped, for a whole TTL.
DROPPED_GRACE = 120


class LinkCache:
    """Per-corp link cache in the store."""

    def __init__(self, store: redis.Redis, corpid: str, ttl: int) -> None:
        self._store = store
        self._corpid = corpid
        self._ttl = max(1, int(ttl))

    def _key(self, unionid: str) -> str:
        return corp_key(self._corpid, "link", unionid)

    def _user_key(self, userid: str) -> str:
        return corp_key(self._corpid, "link-by-user", userid)

    def get(self, unionid: str) -> UserLink | None:
        raw = self._store.get(self._key(unionid))
        if raw is None:
            return None
        data = json.loads(raw)
        return UserLink(data.get("userid"), data.get("contact_type"))

    def _dropped_key(self, userid: str) -> str:
        return corp_key(self._corpid, "link-dropped", userid)

    def put(self, unionid: str, link: UserLink) -> None:
        if link.userid and self._store.exists(self._dropped_key(link.userid)):
            return
        ttl = self._ttl if link.linked else min(self._ttl, UNLINKED_TTL_CAP)
        pipe = self._store.pipeline(transaction=True)
        pipe.set(self._key(unionid), json.dumps({"userid": link.userid, "contact_type": link.contact_type}), ex=ttl)
        if link.userid:
            pipe.sadd(self._user_key(link.userid), unionid)
            pipe.expire(self._user_key(link.userid), ttl)
        pipe.execute()

    def drop_users(self, userids: list[str]) -> int:
        """Forget the links of these userids; return how many links were dropped."""
        dropped = 0
        for userid in userids:
            unionids = self._store.smembers(self._user_key(userid))
            keys = [self._key(u) for u in unionids]
            if keys:
                dropped += int(self._store.delete(*keys))
            self._store.delete(self._user_key(userid))
            self._store.set(self._dropped_key(userid), "1", ex=DROPPED_GRACE)
        return dropped
