"""The login trace as the console shows it: the newest attempts and config errors, with a hint for every errcode.

Entries are copied field by field (an unknown field is never passed through), and a page URL goes through the
one redaction policy (gateway/trace.py) again on the way out.
"""

from __future__ import annotations

from typing import Any

from corp.runtime import Runtime
from gateway import trace
from oapi.hints import hint_for

KNOWN_OUTCOMES = ("linked", "not_linked", "code_invalid", "upstream_error", "upstream_unavailable", "config_error")
_TRACE_FIELDS = (
    "time",
    "kind",
    "step",
    "outcome",
    "request_id",
    "userid",
    "unionid",
    "contact_type",
    "link_cached",
    "agent_ok",
    "ticket_refreshed",
    "message",
    # a junk window (gateway/trace.py: record_junk): failed logins counted, not listed
    "count",
    "refused",
    "first",
    "window_start",
    "addresses",
    "other_addresses",
)
JUNK_HINT = (
    "Sign-ins with codes DingTalk does not know, counted per window and client address instead of listed (most are "
    "made up). An address past its failed-login budget is refused (429) without asking DingTalk. A real person "
    "among them gets a fresh code by opening the page again."
)


def trace_entry_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A trace entry as the console shows it: known fields only, a hint for every errcode."""
    view = {name: entry.get(name) for name in _TRACE_FIELDS if name in entry}
    errcodes: list[int] = []
    for raw in entry.get("errcodes") or []:
        try:
            errcodes.append(int(raw))
        except (TypeError, ValueError):
            continue
    view["errcodes"] = [{"errcode": code, "hint": hint_for(code)} for code in errcodes]
    view["hint"] = entry.get("hint") or (JUNK_HINT if entry.get("kind") == trace.JUNK else None)
    view["hint"] = view["hint"] or (hint_for(errcodes[0]) if errcodes else None)
    if entry.get("url"):
        # Writers record it redacted; the console does not rely on every writer having done so.
        view["url"] = trace.redact_url(str(entry["url"]))
    return view


def recent_trace(rt: Runtime, corpid: str, *, outcome: str | None = None, count: int = 50) -> dict[str, Any]:
    """Newest login attempts and config errors first, optionally one outcome only."""
    rt.corp(corpid)  # unknown corp -> 404
    everything = trace.recent(rt.store, corpid, count=10_000)
    outcomes = sorted({str(e.get("outcome")) for e in everything if e.get("outcome")} | set(KNOWN_OUTCOMES))
    chosen = [e for e in everything if not outcome or e.get("outcome") == outcome][: max(1, min(count, 500))]
    return {
        "corpid": corpid,
        "outcome": outcome,
        "outcomes": outcomes,
        "entries": [trace_entry_view(e) for e in chosen],
    }


def corps_overview(rt: Runtime) -> list[dict[str, Any]]:
    """Every corp with its latest trace entry, so a failing corp stands out."""
    out: list[dict[str, Any]] = []
    for corpid in rt.registry.corpids():
        corp = rt.corp(corpid)
        latest = trace.recent(rt.store, corpid, count=1)
        recent = trace.recent(rt.store, corpid, count=50)
        out.append(
            {
                **corp.public(),
                "latest": trace_entry_view(latest[0]) if latest else None,
                "recent_failures": sum(1 for e in recent if e.get("outcome") != "linked"),
            }
        )
    return out
