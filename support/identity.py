"""What the support console shows of the gateway's identity side (issue 18, item 5): the published signing keys
(current and previous key ids, until when a retired key stays published) and the registered OpenID Connect
clients. Never a private key, a client secret or its hash."""

from __future__ import annotations

import time
from typing import Any

from corp.runtime import Runtime


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def identity_overview(rt: Runtime, corpid: str | None = None) -> dict[str, Any]:
    """Key ids and clients (those of `corpid` only, when given)."""
    keys = [
        {
            "kid": k.kid,
            "current": k.current,
            "retired_at": _iso(k.retired_at),
            "published_until": _iso(k.published_until),
        }
        for k in rt.keys.published()
    ]
    clients = [c.public_view() for c in rt.clients.all() if corpid is None or c.corpid == corpid]
    for c in clients:
        c["registered_at"] = _iso(c["registered_at"]) if c.get("registered_at") else None
        c["corp_registered"] = rt.registry.exists(c["corpid"])
    return {"keys": keys, "clients": sorted(clients, key=lambda c: c["client_id"])}
