"""The simulated DingTalk open platform (oapi): one `Simulator` put together from its parts.

No Flask here: `Simulator.respond` takes an API name and its query parameters and returns either a
JSON-able dict or a raw (non-JSON) body. The parts, lowest first: `sandbox.model` (corps, people, and what
upstream issued; the one lock), `sandbox.apis` (the upstream's answers), `sandbox.client_side` (the DingTalk
app in the page), `sandbox.controls` (what tests steer). This class only routes to them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from sandbox import client_side
from sandbox.apis import answer, caller_corp
from sandbox.app_controls import AppControls
from sandbox.apps import Apps
from sandbox.controls import DEFAULT_BLOCKED_IP, Controls
from sandbox.demo import (
    DEMO_AGENT_ID,
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_CHANNEL_SECRET,
    DEMO_CORP_SECRET,
    DEMO_CORPID,
    DEMO_FOLLOWERS,
    DEMO_MEMBERS,
    DEMO_ORG_CORPID,
    DEMO_PEOPLE,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from sandbox.followers import Followers
from sandbox.model import Reply, World, check_api
from sandbox.stream import StreamGateway


class Simulator:
    """Simulate the DingTalk open platform (oapi) for one or more corps."""

    def __init__(self, *, clock: Callable[[], float] = time.time, rate_limit: int | None = 20) -> None:
        self._world = World(clock)
        self._controls = Controls(self._world, rate_limit)
        # The current generation (dingtalk-oapi.md §7): orgs, apps and api.dingtalk.com, on the same world and clock.
        self.apps = Apps(self._world)
        self.app_controls = AppControls(self._world)
        self.followers = Followers(self.apps)
        # Stream mode (§7.5): the apps' event connections; its WebSocket server starts with the first connection.
        self.stream = StreamGateway(self.apps)

    @classmethod
    def demo(cls, *, clock: Callable[[], float] = time.time, rate_limit: int | None = 20) -> Simulator:
        """Return a simulator with the demo corp and its people registered."""
        sim = cls(clock=clock, rate_limit=rate_limit)
        sim.add_corp(
            DEMO_CORPID,
            corp_secret=DEMO_CORP_SECRET,
            channel_secret=DEMO_CHANNEL_SECRET,
            agent_id=DEMO_AGENT_ID,
        )
        for person in DEMO_PEOPLE:
            sim.add_person(
                DEMO_CORPID,
                unionid=person["unionid"],
                openid=person["openid"],
                name=person["name"],
                userid=person["userid"],
                contact_type=person["contact_type"],
            )
        sim.add_demo_apps()
        return sim

    def add_demo_apps(self) -> None:
        """Register the current generation's demo: an internal app in the demo corp, a window app and followers."""
        apps = self.apps
        apps.add_org(DEMO_ORG_CORPID)
        for member in DEMO_MEMBERS:
            apps.add_member(DEMO_ORG_CORPID, **member)
        apps.add_app(DEMO_ORG_CORPID, app_key=DEMO_APP_KEY, app_secret=DEMO_APP_SECRET, agent_id=DEMO_APP_AGENT_ID)
        apps.add_org(DEMO_WINDOW_CORPID, virtual_of=DEMO_ORG_CORPID)
        apps.add_app(
            DEMO_WINDOW_CORPID,
            app_key=DEMO_WINDOW_APP_KEY,
            app_secret=DEMO_WINDOW_APP_SECRET,
            agent_id=DEMO_WINDOW_AGENT_ID,
        )
        for f in DEMO_FOLLOWERS:
            apps.add_member(
                DEMO_WINDOW_CORPID,
                userid=f["userid"],
                unionid=f["unionid"],
                associated_unionid=f["associated_unionid"],
                name=f["name"],
            )
            if not f["followed"]:
                self.followers.unfollow(DEMO_WINDOW_CORPID, f["userid"])
            if f["links_to"] is not None:
                self.followers.link(DEMO_WINDOW_CORPID, f["userid"], f["links_to"])

    # ---- data (sandbox.model) ---------------------------------------------------------------------

    def add_corp(
        self,
        corpid: str,
        *,
        corp_secret: str,
        channel_secret: str,
        agent_id: str,
        sign_hash: str = "sha1",
    ) -> None:
        """Register a corp with its two secrets, its service-window agent id and its dd.config hash."""
        self._world.add_corp(
            corpid, corp_secret=corp_secret, channel_secret=channel_secret, agent_id=agent_id, sign_hash=sign_hash
        )

    def add_person(
        self,
        corpid: str,
        *,
        unionid: str,
        openid: str,
        name: str,
        userid: str | None = None,
        contact_type: int | None = None,
    ) -> None:
        """Register a follower of the corp's service window; userid None means no user record."""
        self._world.add_person(
            corpid, unionid=unionid, openid=openid, name=name, userid=userid, contact_type=contact_type
        )

    def set_user_record(self, corpid: str, unionid: str, userid: str | None, contact_type: int | None = 0) -> None:
        """Give a follower a user record (hired), change it, or take it away (left the corp)."""
        self._world.set_user_record(corpid, unionid, userid, contact_type)

    # ---- controls for tests (sandbox.controls) ----------------------------------------------------

    def set_ticket_mode(self, corpid: str, mode: str) -> None:
        """Choose whether a ticket fetch issues a new ticket ("invalidate") or renews the same ("renew")."""
        self._controls.set_ticket_mode(corpid, mode)

    def revoke_tokens(self, corpid: str, pipeline: str = "all") -> None:
        """Make the corp's currently issued tokens of pipeline ("channel", "corp", "all") answer 40014."""
        self._controls.revoke_tokens(corpid, pipeline)

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock forward."""
        self._controls.advance(seconds)

    def set_lifetime(self, seconds: float | None) -> None:
        """Make every token and ticket issued from now on live `seconds` (None: DingTalk's 7200 s)."""
        self._controls.set_lifetime(seconds)

    def inject(
        self,
        api: str,
        errcode: int,
        *,
        times: int = 1,
        errmsg: str = "injected",
        sub_code: int | None = None,
        raw: str | None = None,
        body: dict[str, Any] | None = None,
        corpid: str | None = None,
    ) -> None:
        """Make the next `times` calls of api (for corpid, or any corp) answer this error instead."""
        self._controls.inject(
            api, errcode, times=times, errmsg=errmsg, sub_code=sub_code, raw=raw, body=body, corpid=corpid
        )

    def set_latency(self, seconds: float, api: str = "*") -> None:
        """Delay every answer of api by seconds; "*" sets the default for APIs without their own setting."""
        self._controls.set_latency(seconds, api)

    def set_busy(self, fraction: float, api: str = "*", *, processed: bool = False, seed: int | None = None) -> None:
        """Answer a random `fraction` of api's calls (0 turns it off) with -1, "system busy".

        processed=True carries the call out before answering -1; see `Controls.set_busy` for the details.
        """
        self._controls.set_busy(fraction, api, processed=processed, seed=seed)

    def set_ip_blocked(self, corpid: str, ip: str | None = DEFAULT_BLOCKED_IP) -> None:
        """Make the corp's token endpoints answer 60020 naming ip as off the whitelist; None clears."""
        self._controls.set_ip_blocked(corpid, ip)

    def calls(self, api: str | None = None, corpid: str | None = None) -> int:
        """Count upstream calls that reached the simulator (errors included), optionally filtered."""
        return self._controls.calls(api, corpid)

    def reset_calls(self) -> None:
        """Forget the call counts."""
        self._controls.reset_calls()

    def arrivals(self, api: str | None = None, corpid: str | None = None) -> list[float]:
        """When each upstream call reached the simulator (its clock), oldest first, optionally filtered."""
        return self._controls.arrivals(api, corpid)

    # ---- the DingTalk client side (sandbox.client_side) -------------------------------------------

    def mint_auth_code(self, corpid: str, unionid: str) -> str:
        """Return what dd.channel.permission.requestAuthCode yields for this follower."""
        return client_side.mint_auth_code(self._world, corpid, unionid)

    def mint_employee_code(self, corpid: str, userid: str) -> str:
        """Return what dd.runtime.permission.requestAuthCode yields for this employee."""
        return client_side.mint_employee_code(self._world, corpid, userid)

    def mint_app_code(self, corpid: str, client_id: str, userid: str) -> str:
        """Return what dd.requestAuthCode({corpId, clientId}) yields for a member of the app's org (§7.3)."""
        return self.apps.mint_app_code(corpid, client_id, userid)

    def check_config(
        self,
        *,
        corpId: str,
        agentId: str,
        timeStamp: str,
        nonceStr: str,
        signature: str,
        type: int,
        url: str,
    ) -> dict[str, Any]:
        """Judge a dd.config call as the DingTalk client does: a legacy window (type 1) or an app (type 0)."""
        return client_side.check_config(
            self._world,
            self.apps,
            corpId=corpId,
            agentId=agentId,
            timeStamp=timeStamp,
            nonceStr=nonceStr,
            signature=signature,
            type=type,
            url=url,
        )

    # ---- the upstream (sandbox.apis, behind sandbox.controls) -------------------------------------

    def respond(self, api: str, params: Mapping[str, str]) -> Reply:
        """Answer one upstream call of api with these query parameters."""
        check_api(api)
        self._controls.wait(api)
        world = self._world
        with world.lock:
            corpid = caller_corp(world, params)
            imposed = self._controls.screen(api, corpid, lambda: answer(world, api, params))
            return imposed if imposed is not None else answer(world, api, params)
