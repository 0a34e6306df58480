"""Names of the keys in the shared store.

Layout (house style 7): `dtgw:v1:{CORPID}:...`. The `{CORPID}` braces are a Redis Cluster hash tag, so every key of
one corp lives in one slot and a script or transaction over them also runs on a cluster.
"""

from __future__ import annotations

NAMESPACE = "dtgw:v1"


def corp_key(corpid: str, *parts: str) -> str:
    """The key of one corp's item, e.g. corp_key("ding1", "channel", "token")."""
    return ":".join((NAMESPACE, "{" + corpid + "}", *parts))


def registration_key(corpid: str) -> str:
    """The hash that holds a corp's registration (corp/registry.py writes it; credential writes check it)."""
    return corp_key(corpid, "corp")


# The field of that hash naming the current registration: a new id for every `flask corp add`. A credential is
# only ever written for the registration whose secrets fetched it (oapi/tokens.py), so a replaced or removed
# registration cannot write its tokens and tickets back.
REGISTRATION_FIELD = "registration"


def global_key(*parts: str) -> str:
    """A key that belongs to no corp (the corp index, the egress-IP block).

    On a cluster each lands in a slot of its own; keys that one command or script touches together share a hash
    tag among their parts (the egress-IP block and its probe: `{ip-block}`).
    """
    return ":".join((NAMESPACE, *parts))
