"""The login trace as the console shows it: the newest attempts and config errors, with a hint for every errcode.

Entries are copied field by field (an unknown field is never passed through), and a page URL goes through the
one redaction policy (gateway/trace.py) again on the way out. An errcode is an oapi int or a v1.0 string code
(`Forbidden.AccessDenied.IpNotInWhiteList`): both are shown, with our hint and DingTalk's documented text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corp.runtime import Runtime
from gateway import trace
from gateway.errors import InvalidRequest
from oapi.hints import dingtalk_text
from support.hints_zh import hint_zh
from support.pipelines import errcode_view

KNOWN_OUTCOMES = (
    "linked",
    "not_linked",
    "code_invalid",
    "not_following",  # kind service-window with --require-follow
    "upstream_error",
    "upstream_unavailable",
    "config_error",
)
_TRACE_FIELDS = (
    "time",
    "kind",
    "app_kind",  # the corp's kind of login app when the attempt was made (channel, internal, service-window)
    "step",
    "outcome",
    "request_id",
    "userid",
    "unionid",
    "follower_id",  # kind service-window: the follower's userid in the window's virtual org
    "follow_cached",
    "contact_type",
    "link_cached",
    "agent_ok",
    "ticket_refreshed",
    "message",
    "reference",  # the short code the follower's error screen shows (gateway/trace.reference_of)
    "corpid",  # page refusals: the corpid the link named (a corp nobody registered is traced under "-")
    "agentid",
    # a junk window (gateway/trace.py: record_junk): failed logins counted, not listed
    "count",
    "refused",
    "first",
    "window_start",
    "addresses",
    "other_addresses",
)
# In Chinese, like every hint the console shows (support/hints_zh.py).
JUNK_HINT = (
    "钉钉不认识的授权码登录（多为伪造），按时间窗和客户端地址合并计数，不逐条列出。超出失败登录额度的地址会直接被拒绝"
    "（429），不再询问钉钉。其中若有真实用户，重新打开页面即可获得新的授权码。"
)
# What DingTalk checked, from the page's dd.error report: the checker opens prefilled with it. Nothing secret.
_CHECK_FIELDS = ("url", "signedUrl", "nonceStr", "timeStamp", "signature", "corpId", "agentId", "type")


def trace_entry_view(entry: dict[str, Any]) -> dict[str, Any]:
    """A trace entry as the console shows it: known fields only, a hint for every errcode."""
    entry = trace.with_reference(entry)
    view = {name: entry.get(name) for name in _TRACE_FIELDS if name in entry}
    if isinstance(entry.get("time"), int | float):
        # With its timezone, so support in another zone reads it right (the console shows local time and offset).
        view["time_iso"] = datetime.fromtimestamp(float(entry["time"]), UTC).isoformat(timespec="seconds")
    check = entry.get("check")
    if isinstance(check, dict):
        checked = {name: check[name] for name in _CHECK_FIELDS if check.get(name) is not None}
        for name in ("url", "signedUrl"):
            if name in checked:
                checked[name] = trace.redact_url(str(checked[name]))
        view["check"] = checked
    raw = entry.get("errcodes")
    errcodes = [code for code in map(errcode_view, raw if isinstance(raw, list) else []) if code is not None]
    view["errcodes"] = [{"errcode": code, "hint": hint_zh(code), "dingtalk": dingtalk_text(code)} for code in errcodes]
    # The console speaks Chinese: an errcode's Chinese hint first; the entry's own (English) hint where no errcode
    # explains it (the gateway's own refusals).
    view["hint"] = (
        (JUNK_HINT if entry.get("kind") == trace.JUNK else None)
        or (hint_zh(errcodes[0]) if errcodes else None)
        or entry.get("hint")
    )
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


@dataclass(frozen=True)
class TraceQuery:
    """Filters of a trace search; every one given must hold (issue 22)."""

    reference: str | None = None
    request_id: str | None = None
    userid: str | None = None
    unionid: str | None = None
    outcome: str | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def from_args(cls, args: Any) -> TraceQuery:
        """From a query string: `reference` (any case, dashes or not), `request_id`, `userid`, `unionid`,
        `outcome`, `since` / `until` (unix seconds or ISO 8601 with a timezone); `q` is any one of the first four."""
        q = (args.get("q") or "").strip()
        reference = (args.get("reference") or "").strip()
        fields: dict[str, Any] = {}
        if reference:
            fields["reference"] = trace.normalize_reference(reference)
            if fields["reference"] is None:
                raise InvalidRequest("reference: not a reference code (like R-7KQ2-M9)")
        elif q and trace.normalize_reference(q):
            fields["reference"] = trace.normalize_reference(q)
        for name in ("request_id", "userid", "unionid", "outcome"):
            value = (args.get(name) or "").strip()
            if value:
                fields[name] = value[:128]
        for name in ("since", "until"):
            if args.get(name):
                fields[name] = _instant(name, str(args[name]))
        query = cls(**fields)
        return query if not q or query.reference else _any_of(query, q[:128])

    def admits(self, e: dict[str, Any]) -> bool:
        e = trace.with_reference(e)
        when = float(e.get("time", 0) or 0)
        return (
            all(
                value is None or e.get(name) == value
                for name, value in (
                    ("reference", self.reference),
                    ("request_id", self.request_id),
                    ("userid", self.userid),
                    ("unionid", self.unionid),
                    ("outcome", self.outcome),
                )
            )
            and (self.since is None or when >= self.since)
            and (self.until is None or when <= self.until)
        )


@dataclass(frozen=True)
class _AnyOf(TraceQuery):
    """`q`: a request id, userid or unionid (whichever it is), with the other filters."""

    text: str = ""

    def admits(self, e: dict[str, Any]) -> bool:
        found = self.text in (e.get("request_id"), e.get("userid"), e.get("unionid"), e.get("follower_id"))
        return found and super().admits(e)


def _any_of(query: TraceQuery, text: str) -> TraceQuery:
    return _AnyOf(**{**query.__dict__, "text": text})


def _instant(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name}: unix seconds or ISO 8601 (2024-05-01T09:30+08:00)") from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"{name}: give the timezone (2024-05-01T09:30+08:00 or …Z)")
    return parsed.timestamp()


def search(rt: Runtime, query: TraceQuery, *, corpid: str | None = None, count: int = 50) -> dict[str, Any]:
    """Trace entries of every corp (or one), newest first, that the query admits; each with its corpid."""
    corpids = [corpid] if corpid else [*rt.registry.corpids(), trace.UNREGISTERED]
    if corpid:
        rt.corp(corpid)  # unknown corp -> 404
    found: list[dict[str, Any]] = []
    for cid in corpids:
        for e in trace.recent(rt.store, cid, count=10_000):
            if query.admits(e):
                found.append({**trace_entry_view(e), "corpid": e.get("corpid") if cid == trace.UNREGISTERED else cid})
    found.sort(key=lambda v: -float(v.get("time") or 0))
    return {"query": {k: v for k, v in query.__dict__.items() if v}, "entries": found[: max(1, min(count, 500))]}
