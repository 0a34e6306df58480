"""What the stream process (`flask events stream`, corp/stream.py) reports about each app's connection, read by the
web side (/healthz): one key per corp holding the report as JSON, with a TTL, and an index of the corps reported on.

    dtgw:v1:{CORPID}:stream    the report (oapi.stream.StreamStatus.public() and when it was written), STATE_TTL
    dtgw:v1:streams            the corpids a stream process reports on

The process rewrites every report each HEARTBEAT seconds and on every change of state, so a report older than
STATE_TTL means no process is reporting: a corp in the index without a report is shown as `silent` (the stream
process is not running, or cannot reach the store). Nothing secret is in a report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from kit.keys import corp_key, global_key

HEARTBEAT = 10.0
STATE_TTL = 30
SILENT = "silent"
INDEX = global_key("streams")


def state_key(corpid: str) -> str:
    return corp_key(corpid, "stream")


class StreamStates:
    """The stream reports in the store."""

    def __init__(self, store: redis.Redis, *, ttl: int = STATE_TTL) -> None:
        self._store = store
        self._ttl = max(1, int(ttl))

    def write(self, reports: Iterable[Mapping[str, Any]]) -> None:
        """Store each report (a dict with `corpid`) for the TTL, stamped with the time it was written."""
        now = round(time.time(), 3)
        reports = list(reports)
        if not reports:
            return
        # Not a transaction: the reports live in as many cluster slots as there are corps.
        pipe = self._store.pipeline(transaction=False)
        for report in reports:
            body = json.dumps({**report, "reported_at": now}, ensure_ascii=False, separators=(",", ":"))
            pipe.set(state_key(str(report["corpid"])), body, ex=self._ttl)
        pipe.sadd(INDEX, *(str(r["corpid"]) for r in reports))
        pipe.execute()

    def forget(self, corpids: Iterable[str]) -> None:
        """Drop the reports of corps no longer served (removed, or no longer of a kind with Stream mode)."""
        corpids = list(corpids)
        if corpids:
            self._store.srem(INDEX, *corpids)
            for corpid in corpids:
                self._store.delete(state_key(corpid))

    def read_all(self) -> dict[str, dict[str, Any]]:
        """Every indexed corp's report, by corpid; `{"state": "silent"}` where none is current."""
        corpids = sorted(self._store.smembers(INDEX))
        if not corpids:
            return {}
        pipe = self._store.pipeline(transaction=False)
        for corpid in corpids:
            pipe.get(state_key(corpid))
        reports: dict[str, dict[str, Any]] = {}
        for corpid, raw in zip(corpids, pipe.execute(), strict=True):
            try:
                report = json.loads(raw) if raw else None
            except ValueError:
                report = None
            reports[corpid] = report if isinstance(report, dict) else {"corpid": corpid, "state": SILENT}
        return reports
