"""The signature checker: compare a dd.config signature a page reports with the corp's current ticket (the channel
ticket, or a current-generation app's own JSAPI ticket),
and name what differs (the URL, the hash, the ticket).

The page URL is read by the rule the gateway signs by (gateway/validation.py, as channel/config.py uses it):
what that rule refuses, or places outside the corp's registered origins, the gateway would not sign.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from corp.registry import CHANNEL, Corp
from corp.runtime import Runtime
from gateway.errors import InvalidRequest
from gateway.validation import DEFAULT_PORTS, UrlRefused, WebUrl, parse_web_url
from oapi.credentials import Credential
from oapi.signing import HASHES, normalize_url, sign
from support.pipelines import credential_view

Finding = dict[str, Any]

_FRAGMENT = "it includes the #fragment, which DingTalk drops"
_ENCODED = "its query is still percent-encoded (signed without normalisation; DingTalk checks it decoded)"


def _finding(part: str, status: str, detail: str, **extra: Any) -> Finding:
    return {"part": part, "status": status, "detail": detail, **extra}


def _authority(url: str, page: WebUrl) -> str:
    """`host[:port]` exactly as `url` writes it (case and an explicit port kept, as DingTalk signs it)."""
    return url[len(page.scheme) + 3 : len(url) - len(page.rest)]


def _explicit_port(authority: str) -> str:
    """The port an authority writes out, '' when it names none (IPv6 literals are in brackets)."""
    return authority.rpartition("]")[2].partition(":")[2]


def _url_findings(corp: Corp, url: str, normalized: str, page: WebUrl | None, refusal: str | None) -> list[Finding]:
    """What the URL itself says, whatever the ticket."""
    findings: list[Finding] = []
    if normalized != url:
        findings.append(
            _finding(
                "url",
                "info",
                "DingTalk checks the normalised URL, not the URL as given.",
                given=url,
                normalized=normalized,
            )
        )
    if "#" in url:
        findings.append(
            _finding(
                "fragment",
                "warning",
                "The URL has a #fragment; it is dropped before signing.",
                given=url,
                normalized=normalized,
            )
        )
    if page is None:
        findings.append(_finding("url", "differs", f"The gateway refuses to sign this URL: {refusal}"))
        return findings
    if _explicit_port(_authority(url, page)):
        default = DEFAULT_PORTS[page.scheme] == page.port
        findings.append(
            _finding(
                "port",
                "warning",
                f"The URL has an explicit port :{page.port}"
                + (
                    " (the default one): it is signed as written, so a page opened without it gets 52013."
                    if default
                    else "."
                ),
            )
        )
    if not corp.allows_origin(page.origin):
        findings.append(
            _finding(
                "origin",
                "warning",
                "The URL is not under one of the corp's registered origins; the gateway refuses to sign it.",
            )
        )
    return findings


def _mistakes(given: str, normalized: str, page: WebUrl | None) -> list[tuple[str, str]]:
    """URLs a page may have signed instead of the normalised one (the usual mistakes), each with how it differs.

    Variants of the scheme, port and path are tried only for a URL the gateway's rule accepts.
    """
    before_fragment, hash_, fragment = given.partition("#")
    encoded = [_ENCODED] if before_fragment.partition("?")[2] != normalized.partition("?")[2] else []
    candidates = [(given, "; ".join([_FRAGMENT] * bool(hash_) + encoded)), (before_fragment, "; ".join(encoded))]
    if hash_:
        candidates.append((f"{normalized}#{fragment}", _FRAGMENT))
    if page is not None:
        head = f"{page.scheme}://"
        authority = _authority(given, page)
        tail = normalized[len(head) + len(authority) :]
        port = _explicit_port(authority)
        if port:
            without = f"{head}{authority[: -len(port) - 1]}{tail}"
            candidates.append((without, f"it was signed without the explicit :{port} the page URL has"))
        else:
            default = DEFAULT_PORTS[page.scheme]
            with_port = f"{head}{authority}:{default}{tail}"
            candidates.append((with_port, f"it has an explicit :{default} the page URL does not have"))
        path = tail.partition("?")[0]
        if path in ("", "/"):
            other = "" if path else "/"
            candidates.append(
                (
                    f"{head}{authority}{other}{tail[len(path) :]}",
                    f"its path {other or '(empty)'!r} differs from {path or '(empty)'!r} (trailing slash?)",
                )
            )
        scheme = "http" if page.scheme == "https" else "https"
        candidates.append((scheme + normalized[len(page.scheme) :], f"it uses {scheme}:// where the page has {head}"))
    unique: dict[str, str] = {}
    for candidate, reason in candidates:
        if candidate != normalized and candidate not in unique:
            unique[candidate] = reason or "it differs"
    return list(unique.items())


def _signature_findings(signature: str, algorithm: str, corpid: str) -> list[Finding]:
    if not all(c in "0123456789abcdef" for c in signature) or len(signature) not in (40, 64):
        return [_finding("signature", "differs", "The signature is not a sha1 (40) or sha256 (64) hex digest.")]
    looks = "sha1" if len(signature) == 40 else "sha256"
    if looks == algorithm:
        return []
    detail = f"The signature is a {looks} digest, but corp {corpid} is registered with {algorithm}."
    return [_finding("algorithm", "differs", detail)]


LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


def _host_variants(corp: Corp, normalized: str, page: WebUrl | None) -> list[tuple[str, str]]:
    """The URL under another name of the same server: each registered origin's host, and the loopback aliases
    (`localhost` vs `127.0.0.1`), each with the port kept. A page signed under one of them fails as 52013 at the
    other, and the fix is the host, not the ticket."""
    if page is None:
        return []
    head = f"{page.scheme}://"
    authority = normalized[len(head) :].split("/", 1)[0].split("?", 1)[0]
    host = authority.rsplit(":", 1)[0] if _explicit_port(authority) else authority
    port = authority[len(host) :]
    tail = normalized[len(head) + len(authority) :]
    hosts = [o.rsplit("://", 1)[-1].rsplit(":", 1)[0] for o in corp.origins]
    if host.lower() in LOOPBACK:
        hosts += list(LOOPBACK)
    variants = []
    for other in dict.fromkeys(hosts):
        if other.lower() != host.lower():
            reason = f"it was signed for host {other}, but the page is opened at host {host}"
            variants.append((f"{head}{other}{port}{tail}", reason))
    return variants


def _differs_by(signed: str, checked: str) -> str:
    """Which part of the URL differs between what was signed and what DingTalk checked: host, port or url."""
    a, b = urlsplit(signed), urlsplit(checked)
    if (a.scheme, a.path, a.query) == (b.scheme, b.path, b.query):
        if a.hostname != b.hostname:
            return "host"
        if a.port != b.port:
            return "port"
    return "url"


def _ticket_then(tickets: list[Credential], timestamp: str) -> Credential | None:
    """The ticket that was current when the page was signed (`timeStamp`, ms): the newest fetched before it."""
    try:
        at = int(timestamp) / 1000
    except ValueError:
        return None
    before = [t for t in tickets if t.fetched_at <= at + 1]
    return max(before, key=lambda t: t.generation) if before else None


# What to tell support for each verdict, in Chinese (the console's language); `message` stays the English detail.
ZH = {
    "match": "签名与当时的 ticket 和规范化后的 URL 一致。",
    "url": (
        "URL 不一致：签名时的地址与钉钉校验的地址不同（页面在签名后改了地址，或地址未按规范化处理）。"
        "修复：在页面地址最终确定后再请求 /channel/config 并调用 dd.config。"
    ),
    "host": (
        "主机名不一致：页面以一个主机名签名，却以另一个主机名（别名）打开。"
        "修复：只用一个主机名打开页面（服务窗菜单里的链接与页面实际地址一致），或让页面以 url=location.href 请求签名。"
    ),
    "port": "端口不一致：签名与页面地址的端口写法不同。修复：签名时使用页面实际地址（含或不含端口须一致）。",
    "ticket": (
        "ticket 代数不一致：页面使用的是旧的 ticket 签名，之后 ticket 已刷新。修复：让用户重新打开页面（点“重试”）。"
    ),
    "ticket_unknown": (
        "与当前 ticket 及保留的近期 ticket 都不匹配：可能是更早的 ticket、其他企业或其他应用的 ticket。"
        "修复：重新打开页面；如果持续，强制刷新 ticket 并检查企业/应用配置。"
    ),
    "algorithm": "哈希算法不一致：签名方与企业的 sign_hash 设置不同。修复：统一 sha1/sha256 设置。",
    "corp": "企业 ID（corpId）不一致：dd.config 中的 corpId 不是该企业的。修复：检查页面传给 dd.config 的 corpId。",
    "agent": "应用 ID（agentId）不一致：dd.config 中的 agentId 与企业登记的不同。修复：检查链接和网关登记的 agentId。",
    "no_ticket": "网关没有缓存的 ticket，无法比对（控制台不会为检查而拉取新 ticket）。",
}


def check_signature(
    rt: Runtime,
    corpid: str,
    *,
    url: str,
    nonce: str,
    timestamp: str,
    signature: str,
    signed_url: str | None = None,
    corp_id: str | None = None,
    agent_id: str | None = None,
) -> dict[str, Any]:
    """Compare a reported dd.config signature with the ticket current when the page was signed (the recent
    tickets are kept sealed, oapi/tokens.py) and the current one; name the one thing that differs.

    Uses cached tickets only (peek, history): a check must never fetch, since a fetch may invalidate the ticket
    every open page was signed with.
    """
    corp = rt.corp(corpid)
    url, nonce, timestamp = url.strip(), nonce.strip(), timestamp.strip()
    signature = signature.strip().lower()
    signed_url = (signed_url or "").strip()
    if not url or not nonce or not timestamp or not signature:
        raise InvalidRequest("url, nonceStr, timeStamp and signature are all required")
    normalized = normalize_url(url)
    algorithm = corp.sign_hash if corp.sign_hash in HASHES else "sha1"
    page: WebUrl | None = None
    refusal = None
    try:
        page = parse_web_url(url)
    except UrlRefused as e:
        refusal = f"url: {e.reason}. {e.hint}"
    findings = _url_findings(corp, url, normalized, page, refusal) + _signature_findings(signature, algorithm, corpid)

    # The ticket the corp's pages are signed with: the channel ticket (legacy window) or the app's own JSAPI ticket.
    cache = rt.channel_client(corp).ticket if corp.kind == CHANNEL else rt.app_client(corp).app_ticket
    ticket = cache.peek()
    kept: list[Credential] = list(cache.history())
    then = _ticket_then(kept, timestamp)
    result: dict[str, Any] = {
        "corpid": corpid,
        "given_url": url,
        "signed_url": signed_url or None,
        "normalized_url": normalized,
        "algorithm": algorithm,
        "ticket": credential_view(ticket, time.time()) if ticket else None,
        "ticket_then": credential_view(then, time.time()) if then else None,
        "tickets_kept": len(kept),
    }
    identity = _identity_findings(corp, corp_id, agent_id)
    tickets: list[Credential] = []
    for candidate in (ticket, then, *kept):
        if candidate is not None and all(candidate.generation != t.generation for t in tickets):
            tickets.append(candidate)
    if not tickets:
        findings.append(
            _finding(
                "ticket",
                "unknown",
                "No channel ticket is cached for this corp, so nothing can be compared (the console never fetches "
                "one just to check). The page's ticket has expired or was replaced; reload the page.",
            )
        )
        return {**result, "match": False, "verdict": "no_ticket", "summary": ZH["no_ticket"], "findings": findings}

    def matches(value: str, candidate_url: str, algo: str) -> bool:
        expected = sign(value, nonce, timestamp, candidate_url, algo)
        return hmac.compare_digest(expected.encode(), signature.encode())

    verdict = _verdict(matches, corp, url, normalized, signed_url, algorithm, page, tickets, ticket)
    if verdict["match"]:
        findings = [f for f in findings if f["part"] != "port"]  # a signature that matches needs no port warning
    if identity:
        first = identity[0]
        verdict = {
            **verdict,
            "match": False,
            "verdict": first["part"],
            "message": first["detail"],
            "findings": identity + verdict["findings"],
        }
    verdict["summary"] = ZH[verdict["verdict"] if verdict["verdict"] in ZH else "ticket_unknown"]
    if verdict.get("unknown_ticket"):
        verdict["summary"] = ZH["ticket_unknown"]
    verdict["findings"] = findings + verdict["findings"]
    return {**result, **verdict}


def _identity_findings(corp: Corp, corp_id: str | None, agent_id: str | None) -> list[Finding]:
    """The corpId and agentId the page passed to dd.config, if reported, against the corp's registration."""
    out = []
    if corp_id and corp_id != corp.corpid:
        out.append(_finding("corp", "differs", f"dd.config had corpId {corp_id}, the corp is {corp.corpid}."))
    if agent_id and agent_id != corp.agent_id:
        out.append(_finding("agent", "differs", f"dd.config had agentId {agent_id}, the corp's is {corp.agent_id}."))
    return out


def _verdict(
    matches: Callable[[str, str, str], bool],
    corp: Corp,
    url: str,
    normalized: str,
    signed_url: str,
    algorithm: str,
    page: WebUrl | None,
    tickets: list[Credential],
    current: Credential | None,
) -> dict[str, Any]:
    """Which ticket, URL and hash the signature was made with, and so the one thing that differs."""
    corpid = corp.corpid
    other = [a for a in HASHES if a != algorithm]
    variants: list[tuple[str, str]] = []
    if signed_url and normalize_url(signed_url) != normalized:
        part = _differs_by(normalize_url(signed_url), normalized)
        variants.append((normalize_url(signed_url), f"the page changed its address after it was signed ({part})"))
    variants += _host_variants(corp, normalized, page)
    variants += _mistakes(url, normalized, page)
    for ticket in tickets:
        for algo in (algorithm, *other):
            for candidate, difference in [(normalized, ""), *variants]:
                if not matches(ticket.value, candidate, algo):
                    continue
                return _named(corpid, url, normalized, candidate, difference, algo, algorithm, ticket, current)
    fingerprint = current.fingerprint if current else "-"
    detail = (
        f"No match with the current ticket (fingerprint {fingerprint}) or the {len(tickets) - 1} recent one(s) kept, "
        "under any URL variant, host alias or hash: the page was signed with an older ticket (or another corp's or "
        "app's). Reload the page; if it persists, force-refresh the ticket."
    )
    return {
        "match": False,
        "verdict": "ticket",
        "unknown_ticket": True,
        "message": "ticket stale: no match with the current ticket or the recent ones kept",
        "findings": [_finding("ticket", "differs", detail)],
    }


def _named(
    corpid: str,
    url: str,
    normalized: str,
    candidate: str,
    difference: str,
    algo: str,
    algorithm: str,
    ticket: Credential,
    current: Credential | None,
) -> dict[str, Any]:
    """The verdict for a signature that matched `ticket`, `candidate` and `algo`: the first that differs."""
    is_current = current is not None and ticket.generation == current.generation
    ticket_note = (
        _finding(
            "ticket",
            "ok",
            f"Signed with the current ticket (generation {ticket.generation}, fingerprint {ticket.fingerprint}).",
        )
        if is_current
        else _finding(
            "ticket",
            "differs",
            f"Signed with ticket generation {ticket.generation} (fingerprint {ticket.fingerprint}), but the current "
            f"one is generation {current.generation if current else '?'}: the ticket was refreshed after the page "
            "was signed. Reload the page (retry); nothing to fix in the configuration.",
            signed_generation=ticket.generation,
            current_generation=current.generation if current else None,
        )
    )
    if candidate != normalized:
        # The usual signing mistakes (port written out or not, encoding, fragment, slash) are the URL's
        # normalisation; a host alias, or the page's own address changed after signing, names its part.
        part = "url"
        if difference.startswith("it was signed for host"):
            part = "host"
        elif difference.startswith("the page changed"):
            part = _differs_by(candidate, normalized)
        detail = f"The signature is for another URL: {difference}."
        extra = {"signed": candidate, "normalized": normalized, "given": url, "algorithm": algo}
        return {
            "match": False,
            "verdict": part,
            "message": f"{part} differs: signed {candidate!r}, DingTalk checks {normalized!r}",
            "findings": [_finding(part if part != "port" else "url", "differs", detail, **extra), ticket_note],
        }
    if algo != algorithm:
        detail = (
            f"Matches with {algo}, but corp {corpid} uses {algorithm}: the signer and the corp's "
            "sign_hash setting disagree."
        )
        return {
            "match": False,
            "verdict": "algorithm",
            "message": f"hash algorithm: matches with {algo} but the corp uses {algorithm}",
            "findings": [_finding("algorithm", "differs", detail, expected=algorithm, given=algo), ticket_note],
        }
    if not is_current:
        return {
            "match": False,
            "verdict": "ticket",
            "message": (
                f"ticket generation: signed with generation {ticket.generation}, current is "
                f"{current.generation if current else 'none cached'}"
            ),
            "findings": [ticket_note],
        }
    return {
        "match": True,
        "verdict": "match",
        "message": (
            "The signature matches the current ticket and the normalised URL. If DingTalk still answers 52013, "
            "the page passed other values to dd.config than these (check type: 1, corpId, agentId), or its "
            "location.href differs from the URL given here."
        ),
        "findings": [ticket_note],
    }
