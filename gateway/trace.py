"""Per-corp capped trace of login attempts and page-reported config errors, for support staff.

Entries carry time, kind, step reached, errcodes, outcome and request id; never a code, token or ticket.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from gateway.store import corp_key


def trace_key(corpid: str) -> str:
    return corp_key(corpid, "trace")


def record(store: redis.Redis, corpid: str, entry: dict[str, Any], *, limit: int = 200) -> None:
    """Prepend an entry and keep the newest `limit`."""
    entry = {"time": round(time.time(), 3), **entry}
    pipe = store.pipeline(transaction=True)
    pipe.lpush(trace_key(corpid), json.dumps(entry, ensure_ascii=False))
    pipe.ltrim(trace_key(corpid), 0, max(0, limit - 1))
    pipe.execute()


def recent(store: redis.Redis, corpid: str, *, count: int = 50, outcome: str | None = None) -> list[dict[str, Any]]:
    """The newest entries first, optionally only those with one outcome."""
    entries = [json.loads(raw) for raw in store.lrange(trace_key(corpid), 0, -1)]
    if outcome:
        entries = [e for e in entries if e.get("outcome") == outcome]
    return entries[:count]
