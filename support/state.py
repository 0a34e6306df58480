"""What the console shows, computed without a request: pipeline state, trace, signature check, self-test.

Nothing returned here carries a secret, token, ticket or auth code: credentials appear as fingerprints only,
and trace entries are copied field by field (an unknown field is never passed through).
"""

from __future__ import annotations

import hmac
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from channel.signing import HASHES, normalize_url, sign
from corp.check import check_corp
from corp.registry import Corp
from gateway import trace
from gateway.errors import InvalidRequest, TooManyRequests
from gateway.runtime import Runtime
from kit.keys import corp_key
from kit.sealing import fingerprint
from oapi.hints import hint_for
from oapi.tokens import Credential, CredentialCache

# The API each pipeline's fetch calls, to show the backoff that holds it up.
PIPELINES: dict[str, tuple[str, str]] = {
    # name: (label, upstream API)
    "channel_token": ("channel token (corpid + channelSecret)", "channel/get_channel_token"),
    "corp_token": ("corp token (corpid + corpSecret)", "gettoken"),
    "channel_ticket": ("channel jsapi ticket (dd.config type 1)", "channel/get_channel_jsapi_ticket"),
}
IP_BLOCK = "*ip-block*"
KNOWN_OUTCOMES = ("linked", "not_linked", "code_invalid", "upstream_error", "upstream_unavailable", "config_error")
# Query parameters whose values a trace must not show in full, should a page ever put one in its URL.
_SENSITIVE_PARAMS = frozenset({"code", "authcode", "auth_code", "ticket", "jsapi_ticket", "token", "access_token"})
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
)


DEFAULT_SELFTEST_COOLDOWN = 5


class SelfTestCooldown(TooManyRequests):
    """The console's own pause between self-tests of one corp (DingTalk is not involved: 429, not 503)."""

    default_hint = (
        "The self-test calls gettoken live, which DingTalk throttles; it runs at most once per corp every few "
        "seconds. Wait the seconds in Retry-After."
    )


class RefreshCooldown(TooManyRequests):
    """A forced refresh within the pipeline's cooldown window (shared with page-reported 52013 refreshes)."""

    default_hint = (
        "Each forced refresh invalidates the credential every open page was signed with, so it runs at most once "
        "per corp and pipeline per GATEWAY_TICKET_COOLDOWN. The current value stays valid; wait the seconds in "
        "Retry-After."
    )


def cooldown(rt: Runtime) -> int:
    return int(rt.config["GATEWAY_TICKET_COOLDOWN"])


def cache_for(rt: Runtime, corp: Corp, pipeline: str) -> CredentialCache[Any]:
    """The credential cache behind one pipeline name."""
    if pipeline == "channel_token":
        return rt.channel_client(corp).token
    if pipeline == "corp_token":
        return rt.corp_client(corp).token
    if pipeline == "channel_ticket":
        return rt.channel_client(corp).ticket
    raise InvalidRequest(f"pipeline: must be one of {', '.join(PIPELINES)}")


def _credential_view(cred: Credential | None, now: float) -> dict[str, Any]:
    if cred is None:
        return {"cached": False, "fingerprint": None, "fetched_at": None, "expires_at": None, "expires_in": None}
    return {
        "cached": True,
        "fingerprint": cred.fingerprint,
        "fetched_at": round(cred.fetched_at, 3),
        "expires_at": round(cred.expires_at, 3),
        "expires_in": max(0, int(cred.expires_at - now)),
        "generation": cred.generation,
    }


def _failure_view(failure: dict[str, object] | None) -> dict[str, Any] | None:
    if not failure:
        return None
    raw = failure.get("errcode")
    errcode = int(raw) if isinstance(raw, int | str) and str(raw).lstrip("-").isdigit() else None
    return {
        "errcode": errcode,
        "errmsg": str(failure.get("errmsg") or "")[:200],
        "hint": str(failure.get("hint") or "") or hint_for(errcode),
    }


def pipeline_state(rt: Runtime, corp: Corp, pipeline: str, *, backoff: dict[str, int] | None = None) -> dict[str, Any]:
    """One pipeline: cached or not, when fetched, expiry, fingerprint, remembered failure, backoff, cooldown."""
    cache = cache_for(rt, corp, pipeline)
    now = time.time()
    label, api = PIPELINES[pipeline]
    backoff = rt.upstream.backoff.active(corp.corpid) if backoff is None else backoff
    held = {name: secs for name, secs in backoff.items() if name in (api, IP_BLOCK)}
    return {
        "pipeline": pipeline,
        "label": label,
        "api": api,
        **_credential_view(cache.peek(), now),
        "failure": _failure_view(cache.remembered_failure()),
        "backoff": held,
        "cooldown_left": cache.cooldown_left(),
        "cooldown": cooldown(rt),
    }


def corp_state(rt: Runtime, corpid: str) -> dict[str, Any]:
    """A corp's public settings, its three pipelines and every backoff window in force."""
    corp = rt.corp(corpid)
    backoff = rt.upstream.backoff.active(corpid)
    return {
        "corp": corp.public(),
        "pipelines": [pipeline_state(rt, corp, name, backoff=backoff) for name in PIPELINES],
        "backoff": backoff,
        "now": round(time.time(), 3),
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


def refresh(rt: Runtime, corpid: str, pipeline: str) -> dict[str, Any]:
    """Force a refresh and return the new state; raise RefreshCooldown if one was forced within the cooldown."""
    corp = rt.corp(corpid)
    cache = cache_for(rt, corp, pipeline)
    fresh = cache.force_refresh(cooldown(rt))
    if fresh is None:
        left = max(1, int(cache.cooldown_left()))
        raise RefreshCooldown(
            f"Refused: a {pipeline} refresh of corp {corpid} was forced less than {cooldown(rt)} s ago; "
            f"try again in {left} s",
            retry_after=left,
        )
    state = pipeline_state(rt, corp, pipeline)
    return {"refreshed": True, "message": f"Refreshed: new fingerprint {fresh.fingerprint}.", "state": state}


# -- trace -----------------------------------------------------------------------------------------------------
def _redact_url(url: str) -> str:
    """The URL with the values of code/ticket/token-like query parameters replaced by fingerprints."""
    base, qmark, query = url.partition("?")
    if not qmark:
        return url
    fragment = ""
    if "#" in query:
        query, _, fragment = query.partition("#")
        fragment = "#" + fragment
    parts = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name.lower() in _SENSITIVE_PARAMS and value:
            value = f"[fp {fingerprint(value)}]"
        parts.append(f"{name}={value}")
    return base + "?" + "&".join(parts) + fragment


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
    view["hint"] = entry.get("hint") or (hint_for(errcodes[0]) if errcodes else None)
    if entry.get("url"):
        view["url"] = _redact_url(str(entry["url"]))
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


# -- signature checker -----------------------------------------------------------------------------------------
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _split(url: str) -> tuple[str, str, str, str, str]:
    """(scheme, authority, path, query, fragment) without any decoding; '' where absent."""
    rest, _, fragment = url.partition("#")
    scheme, sep, rest = rest.partition("://")
    if not sep:
        scheme, rest = "", url.partition("#")[0]
    ends = [i for i in (rest.find("/"), rest.find("?")) if i >= 0]
    cut = min(ends) if ends else len(rest)
    authority, remainder = rest[:cut], rest[cut:]
    path, _, query = remainder.partition("?")
    return scheme, authority, path, query, fragment


def describe_difference(signed: str, normalized: str) -> str:
    """Say in words how the URL a page signed differs from the URL DingTalk checks."""
    s_scheme, s_auth, s_path, s_query, s_frag = _split(signed)
    n_scheme, n_auth, n_path, n_query, _ = _split(normalized)
    reasons = []
    if "#" in signed:
        reasons.append("it includes the #fragment, which DingTalk drops")
    if s_scheme.lower() != n_scheme.lower():
        reasons.append(f"it uses {s_scheme}:// where the page has {n_scheme}://")
    if s_auth != n_auth:
        s_port = s_auth.rpartition(":")[2] if ":" in s_auth.rpartition("@")[2] else ""
        n_port = n_auth.rpartition(":")[2] if ":" in n_auth.rpartition("@")[2] else ""
        if s_port and not n_port:
            reasons.append(f"it has an explicit :{s_port} the page URL does not have")
        elif n_port and not s_port:
            reasons.append(f"it was signed without the explicit :{n_port} the page URL has")
        else:
            reasons.append(f"its host part {s_auth!r} differs from {n_auth!r}")
    if s_path != n_path:
        reasons.append(f"its path {s_path or '(empty)'!r} differs from {n_path or '(empty)'!r} (trailing slash?)")
    if s_query != n_query:
        if normalize_url("x://h?" + s_query) == "x://h?" + n_query:
            reasons.append(
                "its query is still percent-encoded (signed without normalisation; DingTalk checks it decoded)"
            )
        else:
            reasons.append("its query differs")
    return "; ".join(reasons) or "it differs"


def _url_variants(given: str, normalized: str) -> list[str]:
    """URLs a page may have signed instead of the normalised one (the usual mistakes)."""
    variants = [given, given.split("#", 1)[0]]
    if "#" in given:
        variants.append(normalized + "#" + given.split("#", 1)[1])
    scheme, authority, path, query, _ = _split(normalized)
    tail = path + ("?" + query if "?" in normalized else "")
    userinfo, at, hostport = authority.rpartition("@")
    prefix = userinfo + at
    host, colon, port = hostport.rpartition(":")
    if colon and port.isdigit():
        variants.append(f"{scheme}://{prefix}{host}{tail}")
    elif scheme in _DEFAULT_PORTS:
        variants.append(f"{scheme}://{prefix}{hostport}:{_DEFAULT_PORTS[scheme]}{tail}")
    if path in ("", "/"):
        other_path = "" if path == "/" else "/"
        variants.append(f"{scheme}://{authority}{other_path}" + ("?" + query if "?" in normalized else ""))
    other_scheme = {"http": "https", "https": "http"}.get(scheme)
    if other_scheme:
        variants.append(other_scheme + normalized[len(scheme) :])
    unique: list[str] = []
    for v in variants:
        if v != normalized and v not in unique:
            unique.append(v)
    return unique


def check_signature(
    rt: Runtime, corpid: str, *, url: str, nonce: str, timestamp: str, signature: str
) -> dict[str, Any]:
    """Compare a reported dd.config signature with the corp's current channel ticket; name what differs.

    Uses the cached ticket only (peek): a check must never fetch, since a fetch may invalidate the ticket
    every open page was signed with.
    """
    corp = rt.corp(corpid)
    url, nonce, timestamp = url.strip(), nonce.strip(), timestamp.strip()
    signature = signature.strip().lower()
    if not url or not nonce or not timestamp or not signature:
        raise InvalidRequest("url, nonceStr, timeStamp and signature are all required")
    normalized = normalize_url(url)
    algorithm = corp.sign_hash if corp.sign_hash in HASHES else "sha1"
    findings: list[dict[str, Any]] = []

    def finding(part: str, status: str, detail: str, **extra: Any) -> None:
        findings.append({"part": part, "status": status, "detail": detail, **extra})

    # What the URL itself says, whatever the ticket.
    if normalized != url:
        finding(
            "url",
            "info",
            "DingTalk checks the normalised URL, not the URL as given.",
            given=url,
            normalized=normalized,
        )
    if "#" in url:
        finding(
            "fragment",
            "warning",
            "The URL has a #fragment; it is dropped before signing.",
            given=url,
            normalized=normalized,
        )
    try:
        parts = urlsplit(url)
        port = parts.port
        scheme = parts.scheme.lower()
    except ValueError:
        port, scheme = None, ""
        finding("url", "differs", "The URL does not parse (bad port?); DingTalk answers 52014 for it.")
    if port is not None:
        default = _DEFAULT_PORTS.get(scheme) == str(port)
        finding(
            "port",
            "warning",
            f"The URL has an explicit port :{port}"
            + (
                " (the default one): it is signed as written, so a page opened without it gets 52013."
                if default
                else "."
            ),
        )
    if scheme not in ("http", "https"):
        finding("url", "differs", "DingTalk only signs http(s) page URLs.")
    if not corp.allows(url):
        finding(
            "origin",
            "warning",
            "The URL is not under one of the corp's registered origins; the gateway refuses to sign it.",
        )
    if not all(c in "0123456789abcdef" for c in signature) or len(signature) not in (40, 64):
        finding("signature", "differs", "The signature is not a sha1 (40) or sha256 (64) hex digest.")
    else:
        looks = "sha1" if len(signature) == 40 else "sha256"
        if looks != algorithm:
            finding(
                "algorithm",
                "differs",
                f"The signature is a {looks} digest, but corp {corpid} is registered with {algorithm}.",
            )

    ticket = rt.channel_client(corp).ticket.peek()
    result: dict[str, Any] = {
        "corpid": corpid,
        "given_url": url,
        "normalized_url": normalized,
        "algorithm": algorithm,
        "ticket": _credential_view(ticket, time.time()) if ticket else None,
    }
    if ticket is None:
        finding(
            "ticket",
            "unknown",
            "No channel ticket is cached for this corp, so nothing can be compared (the console never fetches "
            "one just to check). The page's ticket has expired or was replaced; reload the page.",
        )
        return {**result, "match": False, "verdict": "no_ticket", "findings": findings}

    def matches(candidate_url: str, algo: str) -> bool:
        return bool(hmac_equal(sign(ticket.value, nonce, timestamp, candidate_url, algo), signature))

    if matches(normalized, algorithm):
        finding("ticket", "ok", f"Signed with the current ticket (fingerprint {ticket.fingerprint}).")
        verdict = "match"
        message = (
            "The signature matches the current ticket and the normalised URL. If DingTalk still answers 52013, "
            "the page passed other values to dd.config than these (check type: 1, corpId, agentId), or its "
            "location.href differs from the URL given here."
        )
        return {**result, "match": True, "verdict": verdict, "message": message, "findings": findings}

    other = [a for a in HASHES if a != algorithm]
    for algo in other:
        if matches(normalized, algo):
            finding(
                "algorithm",
                "differs",
                f"Matches with {algo}, but corp {corpid} uses {algorithm}: the signer and the corp's "
                "sign_hash setting disagree.",
                expected=algorithm,
                given=algo,
            )
            return {
                **result,
                "match": False,
                "verdict": "algorithm",
                "message": f"hash algorithm: matches with {algo} but the corp uses {algorithm}",
                "findings": findings,
            }
    for variant in _url_variants(url, normalized):
        for algo in (algorithm, *other):
            if matches(variant, algo):
                finding(
                    "url",
                    "differs",
                    f"The signature is for another URL: {describe_difference(variant, normalized)}.",
                    signed=variant,
                    normalized=normalized,
                    given=url,
                    algorithm=algo,
                )
                return {
                    **result,
                    "match": False,
                    "verdict": "url",
                    "message": f"URL differs: signed {variant!r}, DingTalk checks {normalized!r}",
                    "findings": findings,
                }
    finding(
        "ticket",
        "differs",
        f"No match with the current ticket (fingerprint {ticket.fingerprint}) under any URL variant or hash: "
        "the page was signed with an older ticket (or another corp's or app's). Reload the page; if it persists, "
        "force-refresh the channel ticket.",
    )
    return {
        **result,
        "match": False,
        "verdict": "ticket",
        "message": "ticket stale: no match with the current ticket",
        "findings": findings,
    }


def hmac_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


# -- self-test -------------------------------------------------------------------------------------------------
def self_test(rt: Runtime, corpid: str) -> dict[str, Any]:
    """Fetch both tokens live (not from the cache) and name the typical mistakes (`flask corp check`).

    At most one run per corp per few seconds: each run calls gettoken, which DingTalk throttles.
    """
    corp = rt.corp(corpid)
    pause = int(rt.config.get("GATEWAY_SUPPORT_SELFTEST_COOLDOWN", DEFAULT_SELFTEST_COOLDOWN))
    key = corp_key(corpid, "support", "selftest")
    if pause > 0 and not rt.store.set(key, "1", nx=True, ex=pause):
        left = max(1, int(rt.store.ttl(key)))
        raise SelfTestCooldown(f"A self-test of corp {corpid} ran moments ago; try again in {left} s", retry_after=left)
    results = [r.as_dict() for r in check_corp(rt.upstream, corp)]
    return {"corpid": corpid, "ok": all(r["ok"] for r in results), "results": results}
