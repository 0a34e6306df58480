"""Per-corp capped trace of login attempts and page-reported config errors, for support staff.

Entries carry time, kind, step reached, errcodes, outcome and request id; never a code, token or ticket.
Each kind has its own capped list, so a flood of (unauthenticated) config-error reports cannot push the login
attempts support staff are looking for out of the trace.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from typing import Any

import redis

from gateway.store import corp_key

KINDS = ("login", "config_error")
# Query parameters a page URL may carry that are nobody's business in a trace.
_SENSITIVE = re.compile(r"(code|token|ticket|secret|password|sign)", re.IGNORECASE)


def trace_key(corpid: str, kind: str) -> str:
    return corp_key(corpid, "trace", kind)


def redact_url(url: str | None) -> str | None:
    """The URL exactly as given, but with the values of code/token/ticket-like query parameters masked."""
    if not url or "?" not in url:
        return url
    base, _, query = url.partition("?")
    parts = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        parts.append(f"{name}=***" if eq and _SENSITIVE.search(name) else pair)
    return base + "?" + "&".join(parts)


def record(store: redis.Redis, corpid: str, entry: dict[str, Any], *, limit: int = 200) -> None:
    """Prepend an entry to its kind's list and keep the newest `limit` of that kind."""
    entry = {"time": round(time.time(), 3), **entry}
    kind = str(entry.get("kind"))
    key = trace_key(corpid, kind if kind in KINDS else "login")
    pipe = store.pipeline(transaction=True)
    pipe.lpush(key, json.dumps(entry, ensure_ascii=False))
    pipe.ltrim(key, 0, max(0, limit - 1))
    pipe.execute()


def recent(store: redis.Redis, corpid: str, *, count: int = 50, outcome: str | None = None) -> list[dict[str, Any]]:
    """The newest entries of every kind first, optionally only those with one outcome."""
    lists = [[json.loads(raw) for raw in store.lrange(trace_key(corpid, kind), 0, -1)] for kind in KINDS]
    merged = heapq.merge(*lists, key=lambda e: -float(e.get("time", 0)))
    entries = [e for e in merged if not outcome or e.get("outcome") == outcome]
    return entries[:count]
