"""Record and apply: what both receivers (HTTP push, corp/callbacks.py; Stream mode, corp/stream.py) do with an
event once they have it in the clear, before they acknowledge it to DingTalk.

    record   the event in the corp's durable, de-duplicated log (corp/events.record_durably: on a replica too when
             the store's primary has replicas), by its id across both receivers
    apply    its effects: leave/modify events drop cached links (corp/links.py); a first delivery of a follow or
             unfollow event updates the follow status cache (corp/follows.py)

A receiver acknowledges only after this returns, so an acknowledged event is never lost; when it raises (the
store is down), the receiver does not acknowledge and DingTalk delivers the event again. Effects that can run
twice do run on every delivery, so an event whose first delivery was recorded but not acknowledged still has
them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corp.events import HANDSHAKE_TYPES, event_ids, event_type, record_durably
from corp.follows import FOLLOW_EVENTS, FollowCache, follow_changes
from corp.links import LinkCache
from corp.runtime import Runtime

#: Events after which a cached unionid -> userid link may be wrong.
LINK_EVENTS = frozenset({"user_leave_org", "user_modify_org"})

STORED, DUPLICATE, HANDSHAKE = "stored", "duplicate", "handshake"


@dataclass(frozen=True)
class Intake:
    """What record_and_apply did: ``outcome`` is STORED, DUPLICATE (recorded before) or HANDSHAKE (not recorded)."""

    type: str
    outcome: str
    entry_id: str | None = None


def record_and_apply(rt: Runtime, corpid: str, event: Mapping[str, Any], *, source: str) -> Intake:
    """Record a decrypted event in `corpid`'s log (once, whichever receiver took it first) and apply its effects.

    `source` names the receiver ("push" or "stream"). Raises the store's errors: the caller must then not
    acknowledge the event.
    """
    kind = event_type(event)
    entry_id = None
    if kind in HANDSHAKE_TYPES:
        outcome = HANDSHAKE
    else:
        # Durable before anything else happens: on a replica too when the primary has replicas (else NotDurable,
        # 503: not acknowledged, so DingTalk delivers it again), so an acknowledged event survives the primary.
        appended = record_durably(rt.store, corpid, event, ack_timeout=rt.settings.replica_ack_timeout, source=source)
        outcome, entry_id = (STORED if appended.stored else DUPLICATE), appended.entry_id
    if kind in LINK_EVENTS:
        LinkCache(rt.store, corpid, rt.settings.userid_cache_ttl).drop_users(event_ids(event).get("UserId", []))
    # Only a first delivery acts: a redelivered follow must not undo a later unfollow.
    if outcome == STORED and kind in FOLLOW_EVENTS:
        FollowCache(rt.store, corpid, rt.settings.follow_cache_ttl).apply(follow_changes(event))
    return Intake(kind, outcome, entry_id)
