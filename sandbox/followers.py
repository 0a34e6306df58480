"""A service window's followers and their mapping to the real org (dingtalk-oapi.md §7.4), on top of `sandbox.apps`.

The followers are the members of the window's virtual org (`Org.virtual_of` set). Each has a follow state: a member
added with `Apps.add_member` follows from the start (timestamp 0) until `unfollow`. Unfollowing keeps the member in
the virtual org, so `/v1.0/link/followers/statuses` answers UNFOLLOW for it (a simulator choice; §7.4 does not say).

Mapping to the real org is not settled (U): a follower may be `link`ed to a member of the real org (the same
person), and each real org says which of the follower's ids its `topapi/user/getbyunionid` recognises
(`set_recognised`). Its own members are always found by their own unionid.

Like `sandbox.apps`, every answer expects `World.lock` held; the data methods take it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sandbox.apps import Apps, Member, Org, V1Answer, V1Error, topapi_bad_token
from sandbox.model import SimulatorError

FOLLOWER_STATUSES = "v1.0/link/followers/statuses"
FOLLOWERS = "v1.0/link/followers"
GET_BY_UNIONID = "topapi/user/getbyunionid"
FOLLOWER_V1_APIS = (FOLLOWER_STATUSES, FOLLOWERS)

MAX_RESULTS = 100
# DingTalk documents that a service-window app must not pass accountId and other apps must, but not the code it
# answers when one does otherwise; these stand in (a v1.0 400, as for every parameter error).
ACCOUNT_ID_REFUSED = "InvalidParameter.AccountId"
ACCOUNT_ID_MISSING = "MissingParameter.AccountId"
BAD_PARAMETER = "InvalidParameter"

RECOGNISABLE = ("unionid", "associated_unionid")
# Default: a real org recognises both of a linked follower's ids, because neither reading is settled (U); tests of
# the gateway's `--map-by` pin one reading with `set_recognised(corpid, ["unionid"])` or `["associated_unionid"]`.
DEFAULT_RECOGNISED = RECOGNISABLE


@dataclass
class FollowState:
    followed: bool
    timestamp: int  # milliseconds since the epoch of the last follow or unfollow


class Followers:
    """Follow states, links to the real org and what each real org recognises; answers expect the lock held."""

    def __init__(self, apps: Apps) -> None:
        self.apps = apps
        self.world = apps.world
        self.states: dict[tuple[str, str], FollowState] = {}  # (virtual corpid, userid)
        self.links: dict[tuple[str, str], str] = {}  # (virtual corpid, follower userid) -> real-org userid
        self.recognised: dict[str, tuple[str, ...]] = {}  # real corpid -> a subset of RECOGNISABLE

    # ---- data and controls ------------------------------------------------------------------------------

    def follow(self, corpid: str, userid: str) -> None:
        """Make a member of a virtual org follow its window (again), stamped now."""
        self._set(corpid, userid, followed=True)

    def unfollow(self, corpid: str, userid: str) -> None:
        """Make a member of a virtual org stop following its window, stamped now."""
        self._set(corpid, userid, followed=False)

    def link(self, corpid: str, userid: str, real_userid: str) -> None:
        """Say that follower userid of virtual org corpid is member real_userid of the real org."""
        with self.world.lock:
            org = self._virtual(corpid, userid)
            assert org.virtual_of is not None
            if real_userid not in self.apps.orgs[org.virtual_of].members:
                raise SimulatorError(40035, f"no member {real_userid} in real org {org.virtual_of}")
            self.links[(corpid, userid)] = real_userid

    def set_recognised(self, corpid: str, ids: list[str] | tuple[str, ...]) -> None:
        """Choose which ids of a linked follower the getbyunionid of real org corpid recognises (see RECOGNISABLE)."""
        if not all(i in RECOGNISABLE for i in ids):
            raise SimulatorError(40035, f"ids must be among {', '.join(RECOGNISABLE)}")
        with self.world.lock:
            org = self.apps.orgs.get(corpid)
            if org is None or org.virtual_of is not None:
                raise SimulatorError(40035, f"no real org {corpid}")
            self.recognised[corpid] = tuple(ids)

    def _set(self, corpid: str, userid: str, *, followed: bool) -> None:
        with self.world.lock:
            self._virtual(corpid, userid)
            self.states[(corpid, userid)] = FollowState(followed, int(self.world.now() * 1000))

    def _virtual(self, corpid: str, userid: str) -> Org:
        org = self.apps.orgs.get(corpid)
        if org is None or org.virtual_of is None:
            raise SimulatorError(40035, f"no virtual org {corpid}")
        if userid not in org.members:
            raise SimulatorError(40035, f"no follower {userid} in {corpid}")
        return org

    def state(self, corpid: str, userid: str) -> FollowState:
        """The follow state of a member of a virtual org (followed since 0 unless changed)."""
        return self.states.get((corpid, userid), FollowState(True, 0))

    # ---- api.dingtalk.com /v1.0/link/followers* -----------------------------------------------------------

    def answer_v1(self, api: str, token: str | None, args: dict[str, str]) -> V1Answer:
        """Answer GET /v1.0/link/followers/statuses or /v1.0/link/followers; `token` is the header."""
        try:
            window = self._window(token, args.get("accountId"))
            if api == FOLLOWER_STATUSES:
                return 200, {"result": self._status(window, args.get("userId") or "")}
            return 200, {"result": self._page(window, args.get("nextToken") or "", args.get("maxResults"))}
        except V1Error as e:
            return e.answer()

    def _window(self, token: str | None, account_id: str | None) -> str:
        """Return the virtual org the call is about: the caller's own (a window app) or the one accountId names.

        A simulator choice: the accountId of a window is its virtual org's corpid, and an app of a real org may
        only ask about its own windows. The same rule serves the followers list.
        """
        app_key = self.apps._v1_token(token)
        org = self.apps.orgs[self.apps.apps[app_key].corpid]
        if org.virtual_of is not None:
            if account_id is not None:
                raise V1Error(400, ACCOUNT_ID_REFUSED, "服务窗应用不需要传accountId")
            return org.corpid
        if not account_id:
            raise V1Error(400, ACCOUNT_ID_MISSING, "缺少参数 accountId")
        window = self.apps.orgs.get(account_id)
        if window is None or window.virtual_of != org.corpid:
            raise V1Error(400, BAD_PARAMETER, "accountId 不合法")
        return window.corpid

    def _status(self, corpid: str, userid: str) -> dict[str, Any]:
        if userid not in self.apps.orgs[corpid].members:
            raise V1Error(400, BAD_PARAMETER, "userId 不合法")
        return {"status": "FOLLOWED" if self.state(corpid, userid).followed else "UNFOLLOW"}

    def _page(self, corpid: str, next_token: str, max_results: str | None) -> dict[str, Any]:
        try:
            size = MAX_RESULTS if max_results in (None, "") else int(str(max_results))
            start = int(next_token) if next_token else 0
        except ValueError:
            raise V1Error(400, BAD_PARAMETER, "nextToken 或 maxResults 不合法") from None
        if not 1 <= size <= MAX_RESULTS or start < 0:
            raise V1Error(400, BAD_PARAMETER, f"maxResults 须在 1 到 {MAX_RESULTS} 之间")
        following = sorted(
            (self.state(corpid, m.userid).timestamp, m.userid, m.name)
            for m in self.apps.orgs[corpid].members.values()
            if self.state(corpid, m.userid).followed
        )
        chunk = following[start : start + size]
        result: dict[str, Any] = {"userList": [{"userId": u, "name": n, "timestamp": t} for t, u, n in chunk]}
        if start + size < len(following):
            result["nextToken"] = str(start + size)
        return result

    # ---- oapi.dingtalk.com/topapi/user/getbyunionid ---------------------------------------------------------

    def answer_get_by_unionid(self, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Answer POST /topapi/user/getbyunionid?access_token=APP_TOKEN {unionid} for the token's org."""
        request_id = secrets.token_hex(8)
        issued = self.apps._live_token(token)
        if issued is None:
            return topapi_bad_token(request_id)
        unionid = body.get("unionid")
        if not isinstance(unionid, str) or not unionid:
            return {"errcode": 40035, "errmsg": "不合法的参数: unionid", "request_id": request_id}
        member = self._find(self.apps.apps[issued.app_key].corpid, unionid)
        if member is None:
            return {"errcode": 60121, "errmsg": "找不到该用户", "request_id": request_id}
        return {
            "errcode": 0,
            "errmsg": "ok",
            "result": {"contact_type": member.contact_type, "userid": member.userid},
            "request_id": request_id,
        }

    def _find(self, corpid: str, unionid: str) -> Member | None:
        members = self.apps.orgs[corpid].members
        for member in members.values():
            if member.unionid == unionid:
                return member
        recognised = self.recognised.get(corpid, DEFAULT_RECOGNISED)
        for (virtual, userid), real_userid in self.links.items():
            if self.apps.orgs[virtual].virtual_of != corpid:
                continue
            follower = self.apps.orgs[virtual].members[userid]
            if ("unionid" in recognised and follower.unionid == unionid) or (
                "associated_unionid" in recognised and follower.associated_unionid == unionid
            ):
                return members[real_userid]
        return None
