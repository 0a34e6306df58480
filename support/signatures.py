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

from corp.registry import CHANNEL, Corp
from corp.runtime import Runtime
from gateway.errors import InvalidRequest
from gateway.validation import DEFAULT_PORTS, UrlRefused, WebUrl, parse_web_url
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
    page: WebUrl | None = None
    refusal = None
    try:
        page = parse_web_url(url)
    except UrlRefused as e:
        refusal = f"url: {e.reason}. {e.hint}"
    findings = _url_findings(corp, url, normalized, page, refusal) + _signature_findings(signature, algorithm, corpid)

    # The ticket the corp's pages are signed with: the channel ticket (legacy window) or the app's own JSAPI ticket.
    ticket = rt.channel_client(corp).ticket.peek() if corp.kind == CHANNEL else rt.app_client(corp).app_ticket.peek()
    result: dict[str, Any] = {
        "corpid": corpid,
        "given_url": url,
        "normalized_url": normalized,
        "algorithm": algorithm,
        "ticket": credential_view(ticket, time.time()) if ticket else None,
    }
    if ticket is None:
        findings.append(
            _finding(
                "ticket",
                "unknown",
                "No channel ticket is cached for this corp, so nothing can be compared (the console never fetches "
                "one just to check). The page's ticket has expired or was replaced; reload the page.",
            )
        )
        return {**result, "match": False, "verdict": "no_ticket", "findings": findings}

    def matches(candidate_url: str, algo: str) -> bool:
        expected = sign(ticket.value, nonce, timestamp, candidate_url, algo)
        return hmac.compare_digest(expected.encode(), signature.encode())

    verdict = _verdict(matches, corpid, url, normalized, algorithm, page, ticket.fingerprint)
    verdict["findings"] = findings + verdict["findings"]
    return {**result, **verdict}


def _verdict(
    matches: Callable[[str, str], bool],
    corpid: str,
    url: str,
    normalized: str,
    algorithm: str,
    page: WebUrl | None,
    fingerprint: str,
) -> dict[str, Any]:
    """Which URL and hash the signature was made with: the right ones, another hash, a mistaken URL, or neither
    (then the page was signed with another ticket)."""
    if matches(normalized, algorithm):
        return {
            "match": True,
            "verdict": "match",
            "message": (
                "The signature matches the current ticket and the normalised URL. If DingTalk still answers 52013, "
                "the page passed other values to dd.config than these (check type: 1, corpId, agentId), or its "
                "location.href differs from the URL given here."
            ),
            "findings": [_finding("ticket", "ok", f"Signed with the current ticket (fingerprint {fingerprint}).")],
        }
    other = [a for a in HASHES if a != algorithm]
    for algo in other:
        if matches(normalized, algo):
            detail = (
                f"Matches with {algo}, but corp {corpid} uses {algorithm}: the signer and the corp's "
                "sign_hash setting disagree."
            )
            return {
                "match": False,
                "verdict": "algorithm",
                "message": f"hash algorithm: matches with {algo} but the corp uses {algorithm}",
                "findings": [_finding("algorithm", "differs", detail, expected=algorithm, given=algo)],
            }
    for variant, difference in _mistakes(url, normalized, page):
        for algo in (algorithm, *other):
            if matches(variant, algo):
                detail = f"The signature is for another URL: {difference}."
                extra = {"signed": variant, "normalized": normalized, "given": url, "algorithm": algo}
                return {
                    "match": False,
                    "verdict": "url",
                    "message": f"URL differs: signed {variant!r}, DingTalk checks {normalized!r}",
                    "findings": [_finding("url", "differs", detail, **extra)],
                }
    detail = (
        f"No match with the current ticket (fingerprint {fingerprint}) under any URL variant or hash: the page was "
        "signed with an older ticket (or another corp's or app's). Reload the page; if it persists, force-refresh "
        "the channel ticket."
    )
    return {
        "match": False,
        "verdict": "ticket",
        "message": "ticket stale: no match with the current ticket",
        "findings": [_finding("ticket", "differs", detail)],
    }
