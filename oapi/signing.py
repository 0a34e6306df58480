"""The dd.config signature (dingtalk-oapi.md §4): URL normalisation, nonce, timestamp, digest. Pure."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any
from urllib.parse import unquote_plus

HASHES = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
DEFAULT_HASH = "sha1"  # what a registration signs with unless it says otherwise


def normalize_url(url: str) -> str:
    """The URL as DingTalk's server sample signs it.

    Scheme lower-cased; authority and path untouched (an explicit :80 stays, case stays); fragment dropped;
    only the query percent-decoded, with form rules (`+` is a space), because iOS passes it encoded and
    Android raw.
    """
    url = url.split("#", 1)[0]
    scheme, sep, rest = url.partition("://")
    if sep:
        url = scheme.lower() + sep + rest
    base, qmark, query = url.partition("?")
    if not qmark:
        return base
    return base + "?" + unquote_plus(query)


def sign(ticket: str, nonce: str, timestamp: str, url: str, algorithm: str = DEFAULT_HASH) -> str:
    """Lower-case hex digest of `jsapi_ticket=…&noncestr=…&timestamp=…&url=…` (url already normalised)."""
    plain = f"jsapi_ticket={ticket}&noncestr={nonce}&timestamp={timestamp}&url={url}"
    return HASHES[algorithm](plain.encode("utf-8")).hexdigest()


def sign_config(
    *, corpid: str, agent_id: str, ticket: str, url: str, algorithm: str = DEFAULT_HASH, config_type: int = 1
) -> dict[str, Any]:
    """Sign a dd.config for `url` (already normalised) with a fresh nonce and time: `type: 1` for the legacy service
    window (channel ticket), `type: 0` for an app with its own JSAPI ticket (§7.2).

    The page's config and `flask corp check`'s probe of the agent id are both built here."""
    nonce, stamp = new_nonce(), timestamp_ms()
    return {
        "corpId": corpid,
        "agentId": agent_id,
        "timeStamp": stamp,
        "nonceStr": nonce,
        "signature": sign(ticket, nonce, stamp, url, algorithm),
        "type": config_type,
        "url": url,
    }


def new_nonce() -> str:
    """A fresh random nonce for every config (the old demos' constant nonce is a replay gift): 16 hex chars."""
    return secrets.token_hex(8)


def timestamp_ms() -> str:
    """Now, in milliseconds, as the string dd.config takes."""
    return str(int(time.time() * 1000))
