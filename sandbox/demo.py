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
        "label": "员工（经理）",
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
