"""Define the demo corp and its three kinds of follower, used by sandbox mode and tests.

Plain data: `Simulator.demo()` registers it, and the gateway's sandbox mode registers the same corp with itself.
"""

from __future__ import annotations

from typing import Any

DEMO_CORPID = "dingdemo0001"
# Public on purpose: the sandbox is a toy upstream. They differ so that mixing the pipelines fails.
DEMO_CORP_SECRET = "Xq7vR2mK9pLw4sTz8nBc3dFh6jYe1uGa5oNi0kWx"
DEMO_CHANNEL_SECRET = "c4Hn8QwE2rTy6UiO0pAs5DfG9hJk3LzX7cVb1NmQ"
DEMO_AGENT_ID = "1000001"

DEMO_PEOPLE: list[dict[str, Any]] = [
    {
        "label": "员工 · 经理",
        "unionid": "uEmpl0yee8fQ2xKzN4",
        "openid": "oEmpl0yee3mT7vLpR1",
        "name": "王经理",
        "userid": "manager0001",
        "contact_type": 0,
    },
    {
        "label": "外部联系人",
        "unionid": "uExtern4l6hW9cYbA2",
        "openid": "oExtern4l1sD5gJqE8",
        "name": "李外联",
        "userid": "ext0001",
        "contact_type": 1,
    },
    {
        "label": "未关联的关注者",
        "unionid": "uF0llower2pV7nMtC5",
        "openid": "oF0llower9kR4bXwZ3",
        "name": "张关注",
        "userid": None,
        "contact_type": None,
    },
]

# The current generation (dingtalk-oapi.md §7): an internal app in a real org, and a service window's app in that
# org's virtual org with followers. The real org's members are the same two people as the legacy demo's employee and
# external contact; of the followers, one is the employee, one the external contact, one nobody in the real org, and
# one has unfollowed. Registered by `Simulator.demo()` beside (never instead of) the legacy corp. The real org has
# its own corpid: the gateway registers one login app per corpid, and the legacy demo corp keeps its window.
DEMO_ORG_CORPID = "dingdemoorg0001"
DEMO_APP_AGENT_ID = "2000001"
DEMO_WINDOW_AGENT_ID = "3000001"
DEMO_APP_KEY = "dingdemoapp0001"
DEMO_APP_SECRET = "Ap9kT3wQ7zLm2vRx6cYb1nHs5dGf8jUe4oKi0pWa"
DEMO_WINDOW_CORPID = "dingdemowindow0001"  # the service window's hidden virtual org
DEMO_WINDOW_APP_KEY = "dingdemowindowapp0001"
DEMO_WINDOW_APP_SECRET = "Wn4bV8cX2zL6kJ0hG5fD9sA3qP7oI1uY3tR8eW2m"

DEMO_MEMBERS: list[dict[str, Any]] = [  # the real org's members (unionid as the real org knows them)
    {"userid": "manager0001", "unionid": "uEmpl0yee8fQ2xKzN4", "name": "王经理", "contact_type": 0},
    {"userid": "ext0001", "unionid": "uExtern4l6hW9cYbA2", "name": "李外联", "contact_type": 1},
]

DEMO_FOLLOWERS: list[dict[str, Any]] = [  # members of the virtual org; `links_to` is the real org's userid
    {
        "label": "关注者 · 员工",
        "userid": "vfollower0001",
        "unionid": "uVwMan4ger7kQ2pX9",
        "associated_unionid": "aVwMan4ger3nB8cT1",
        "name": "王经理",
        "followed": True,
        "links_to": "manager0001",
    },
    {
        "label": "关注者 · 外部联系人",
        "userid": "vfollower0002",
        "unionid": "uVwExtern5mR1sL6",
        "associated_unionid": "aVwExtern9hD4gJ2",
        "name": "李外联",
        "followed": True,
        "links_to": "ext0001",
    },
    {
        "label": "关注者 · 未关联",
        "userid": "vfollower0003",
        "unionid": "uVwF0llow2pV7nMt",
        "associated_unionid": "aVwF0llow6kR4bXw",
        "name": "张关注",
        "followed": True,
        "links_to": None,
    },
    {
        "label": "已取消关注",
        "userid": "vfollower0004",
        "unionid": "uVwGone8aZ3xC5v",
        "associated_unionid": "aVwGone1qE7wF9y",
        "name": "赵离开",
        "followed": False,
        "links_to": None,
    },
]
