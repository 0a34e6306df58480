"""Per-corp capped trace of login attempts and page-reported config errors, for support staff.

Entries carry time, kind, step reached, errcodes, outcome and request id; never a code, token or ticket.
Each kind has its own capped list, so a flood of (unauthenticated) config-error reports cannot push the login
attempts support staff are looking for out of the trace.

Logins with a code DingTalk does not know (code_invalid), and those the failed-login budget refused without asking
(channel/junk.py), are junk more often than not: a few addresses sending made-up codes once pushed every real
attempt out of the capped list. They are counted instead, in one entry per corp and window (`record_junk`: a
hash per window with the count and the count per client address), which `recent` shows among the others.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
import time
from typing import Any

import redis

from kit.keys import corp_key

KINDS = ("login", "config_error", "page")  # page: a link that cannot work, refused before any sign-in

# The one redaction policy for page URLs and text that may hold them (traces, the page's reported errorMessage,
# access logs). Query parameters with these in their name are nobody's business outside the page: auth codes,
# tokens, tickets, secrets, signatures, the OpenID Connect provider's `oauth` handle. `errcode`-like names are
# diagnostics, not secrets.
_WORDS = "code|token|ticket|secret|passw|sign|oauth"
_SENSITIVE = re.compile(rf"({_WORDS})", re.IGNORECASE)
_NOT_SENSITIVE = re.compile(r"(err|error|status)_?code", re.IGNORECASE)
MASK = "***"
# A `name=value` pair anywhere in text, its `=` possibly percent-encoded (a page URL inside another URL's query,
# as in `/channel/config?url=https%3A%2F%2Fh5%2Fp%3Fcode%3D…`); the value ends where the pair would. The name is
# a whole run of name characters with a sensitive word in it (lookbehind, possessive): linear time on any input,
# since access log lines are made of whatever a client sends.
_PAIR = re.compile(
    rf"(?<![A-Za-z0-9_.\-])(?=[A-Za-z0-9_.\-]*?(?:{_WORDS}))"
    r"(?P<name>[A-Za-z0-9_.\-]++)(?P<eq>=|%3[Dd])(?P<value>(?:(?!%2[036])[^\s&#;\"'])*+)",
    re.IGNORECASE,
)


def trace_key(corpid: str, kind: str, *parts: str) -> str:
    return corp_key(corpid, "trace", kind, *parts)


def _sensitive(name: str) -> bool:
    return bool(_SENSITIVE.search(name)) and not _NOT_SENSITIVE.fullmatch(name)


def redact_text(text: str) -> str:
    """`text` with the value of every code/token/ticket-like `name=value` pair in it masked, however deep."""
    if "=" not in text and "%3" not in text:
        return text
    return _PAIR.sub(lambda m: f"{m['name']}{m['eq']}{MASK}" if _sensitive(m["name"]) else m.group(0), text)


def redact_url(url: str | None) -> str | None:
    """The URL exactly as given, but with the values of code/token/ticket-like query parameters masked.

    Also inside other parameters' values (a page URL carried in `url=` or `next=`) and in the fragment.
    """
    if not url or ("?" not in url and "#" not in url):
        return url
    base, hash_, fragment = url.partition("#")
    base, qmark, query = base.partition("?")
    parts = []
    for pair in query.split("&") if qmark else ():
        name, eq, _value = pair.partition("=")
        parts.append(f"{name}={MASK}" if eq and _sensitive(name) else redact_text(pair))
    return base + qmark + "&".join(parts) + hash_ + redact_text(fragment)


def record(store: redis.Redis, corpid: str, entry: dict[str, Any], *, limit: int = 200) -> None:
    """Prepend an entry to its kind's list and keep the newest `limit` of that kind."""
    entry = with_reference({"time": round(time.time(), 3), **entry})
    kind = str(entry.get("kind"))
    key = trace_key(corpid, kind if kind in KINDS else "login")
    pipe = store.pipeline(transaction=True)
    pipe.lpush(key, json.dumps(entry, ensure_ascii=False))
    pipe.ltrim(key, 0, max(0, limit - 1))
    pipe.execute()


JUNK = "junk"
JUNK_WINDOWS = 48  # junk windows listed per corp (the newest)
JUNK_ADDRESSES = 20  # client addresses named per window; the rest are counted under "others"
JUNK_TTL = 2 * 86_400  # seconds a window's counts are kept
# KEYS[1] the window's hash, KEYS[2] the corp's index of windows. ARGV: address, window start, now, refused (1/0),
# errcode, TTL, windows kept, addresses named, request id. One script, so concurrent failures never lose a count.
_RECORD_JUNK = """
local field = 'a:' .. ARGV[1]
local named = tonumber(redis.call('HGET', KEYS[1], 'named') or '0')
if redis.call('HEXISTS', KEYS[1], field) == 1 or named < tonumber(ARGV[8]) then
  if redis.call('HINCRBY', KEYS[1], field, 1) == 1 then redis.call('HINCRBY', KEYS[1], 'named', 1) end
else
  redis.call('HINCRBY', KEYS[1], 'others', 1)
end
redis.call('HINCRBY', KEYS[1], 'count', 1)
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'refused', 1) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'errcode', ARGV[5]) end
redis.call('HSETNX', KEYS[1], 'first', ARGV[3])
redis.call('HSET', KEYS[1], 'last', ARGV[3], 'start', ARGV[2], 'request_id', ARGV[9])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[7]) - 1)
redis.call('EXPIRE', KEYS[2], ARGV[6])
"""


def record_junk(
    store: redis.Redis,
    corpid: str,
    address: str,
    *,
    window: int,
    request_id: str = "",
    refused: bool = False,
    errcode: int | None = None,
) -> None:
    """Count one failed (or budget-refused) login from `address` in the corp's junk entry of the current window; the
    entry keeps the newest attempt's request id, whose log lines support can open."""
    now = time.time()
    start = int(now // window * window) if window > 0 else 0
    store.register_script(_RECORD_JUNK)(
        keys=[trace_key(corpid, JUNK, str(start)), trace_key(corpid, JUNK)],
        args=[
            address or "unknown",
            start,
            round(now, 3),
            int(refused),
            "" if errcode is None else errcode,
            JUNK_TTL,
            JUNK_WINDOWS,
            JUNK_ADDRESSES,
            request_id,
        ],
    )


def junk_entries(store: redis.Redis, corpid: str) -> list[dict[str, Any]]:
    """The corp's junk windows as trace entries, newest first."""
    starts = store.zrevrange(trace_key(corpid, JUNK), 0, -1)
    pipe = store.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(trace_key(corpid, JUNK, str(start)))
    entries = []
    for fields in pipe.execute():
        if not fields:
            continue
        addresses = {k[2:]: int(v) for k, v in fields.items() if k.startswith("a:")}
        errcode = fields.get("errcode")
        entries.append(
            {
                "time": float(fields.get("last", 0)),
                "kind": JUNK,
                "step": "exchange_code",
                "outcome": "code_invalid",
                "request_id": fields.get("request_id") or None,
                "count": int(fields.get("count", 0)),
                "refused": int(fields.get("refused", 0)),
                "first": float(fields.get("first", 0)),
                "window_start": int(fields.get("start", 0)),
                "addresses": dict(sorted(addresses.items(), key=lambda kv: -kv[1])),
                "other_addresses": int(fields.get("others", 0)),
                "errcodes": [int(errcode)] if errcode and errcode.lstrip("-").isdigit() else [],
            }
        )
    return entries


def recent(store: redis.Redis, corpid: str, *, count: int = 50, outcome: str | None = None) -> list[dict[str, Any]]:
    """The newest entries of every kind first (junk windows among them), optionally only those with one outcome."""
    lists = [[json.loads(raw) for raw in store.lrange(trace_key(corpid, kind), 0, -1)] for kind in KINDS]
    lists.append(junk_entries(store, corpid))
    merged = heapq.merge(*lists, key=lambda e: -float(e.get("time", 0)))
    entries = [e for e in merged if not outcome or e.get("outcome") == outcome]
    return entries[:count]


# -- reference codes (issue 22) ----------------------------------------------------------------------------------
# A short, readable code for one request, shown on every error the follower sees (`R-7KQ2-M9`), so support can find
# the attempt from a screenshot. Derived from the request id (one home: here), recorded in the trace entry.
# Crockford's base32: no I, L, O or U, so a code read aloud or off a blurred photo is still unambiguous.
_REF_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_REF_RE = re.compile(r"^R?-?([0-9A-Z]{4})-?([0-9A-Z]{2})$")
# Corps nobody registered (a mistyped corpid in a link) share one capped list, so unknown corpids make no keys.
UNREGISTERED = "-"


def reference_of(request_id: str | None) -> str | None:
    """The reference code of a request id, e.g. `R-7KQ2-M9` (6 base32 characters of its SHA-256)."""
    if not request_id:
        return None
    number = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:4], "big") >> 2  # 30 bits
    chars = "".join(_REF_ALPHABET[(number >> shift) & 31] for shift in (25, 20, 15, 10, 5, 0))
    return f"R-{chars[:4]}-{chars[4:]}"


def normalize_reference(text: str) -> str | None:
    """A reference code as a person types it (any case, dashes or not, O for 0, I or L for 1), or None."""
    cleaned = re.sub(r"[\s_]", "", text.upper()).replace("O", "0").replace("I", "1").replace("L", "1")
    match = _REF_RE.match(cleaned)
    return f"R-{match[1]}-{match[2]}" if match else None


def with_reference(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with the reference code of its request id (entries written before references had none)."""
    if entry.get("request_id") and not entry.get("reference"):
        return {**entry, "reference": reference_of(str(entry["request_id"]))}
    return entry
