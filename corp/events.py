"""The per-corp event log: DingTalk pushes recorded in a capped Redis Stream, each event once.

Keys (one hash tag per corp, so the script below also runs on a Redis Cluster)::

    dtgw:v1:{CORPID}:events                  the stream, capped at about STREAM_MAXLEN entries
    dtgw:v1:{CORPID}:event-seen:<digest>     dedupe marker of one event (holds its stream id), DEDUPE_TTL
    dtgw:v1:{CORPID}:callback-seen:<digest>  replay marker of one (signature, nonce) pair

An entry holds only what a consumer needs to act on the event: its type, its time, the time it arrived, the
ids it names (userids, department ids, chat ids, the authorising corp), its dedupe digest, DingTalk's own event
id when it gave one, and which receiver took it (``push`` over HTTP, ``stream`` over Stream mode). Never the
decrypted payload itself: suite events carry single-use auth codes and suite tickets, and nothing here needs
them. A consumer that wants details asks DingTalk for the current state of the named ids.

Handshake events (``check_url``, ``check_create_suite_url``, ``check_update_suite_url``) are probes DingTalk
sends while the URL is being registered; they carry nothing to act on and are not recorded.

An event is acknowledged to DingTalk only once `record_durably` returned: it is in the log on the primary and, when
the primary has replicas, on at least one of them (Redis WAIT), so losing the primary does not lose it. Otherwise
the receiver answers 503 and DingTalk delivers the event again; the dedupe marker stores it once. Every receiver
(the HTTP push receiver today, a Stream receiver later) records through that one function.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from gateway.errors import StoreUnavailable
from gateway.store import Replication, write_replicated
from kit.keys import corp_key

STREAM_MAXLEN = 10_000
#: DingTalk retries an unacknowledged push for hours, not days; a day of dedupe covers every retry.
DEDUPE_TTL = 86_400
#: The payload fields copied into the log. Only ids: nothing secret (AuthCode, SuiteTicket, Random) is here.
ID_FIELDS = ("UserId", "DeptId", "ChatId", "AuthCorpId")
#: Where DingTalk names an event (see dedupe_id).
EVENT_ID_FIELDS = ("EventId", "eventId")
#: Which receiver recorded an event: the HTTP push receiver or the Stream mode one.
SOURCES = ("push", "stream")
HANDSHAKE_TYPES = frozenset({"check_url", "check_create_suite_url", "check_update_suite_url"})
_MAX_IDS = 1000
_MAX_ID_LENGTH = 128
_MAX_TYPE_LENGTH = 64

# Dedupe check and XADD in one atomic step: a crash can neither store an event twice nor mark it seen
# without storing it. The marker is written after XADD, so an XADD error leaves no marker behind.
# A duplicate renews its marker: that write is what the WAIT after the script waits for, and a replica that has
# it has every earlier write too, the first delivery's XADD included (which may not have reached a replica when
# that delivery was answered 503).
_APPEND_ONCE = """
local unpack = unpack or table.unpack
local seen = redis.call('GET', KEYS[1])
if seen then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  return {0, seen}
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
redis.call('SET', KEYS[1], id, 'EX', ARGV[1])
return {1, id}
"""


def stream_key(corpid: str) -> str:
    return corp_key(corpid, "events")


def dingtalk_event_id(event: Mapping[str, Any]) -> str | None:
    """DingTalk's own id of an event (``EventId``; ``eventId`` as Stream mode and newer pushes spell it), if any."""
    for name in EVENT_ID_FIELDS:
        value = event.get(name)
        if isinstance(value, str) and 0 < len(value) <= _MAX_ID_LENGTH:
            return value
    return None


def dedupe_id(event: Mapping[str, Any]) -> str:
    """Return the digest that identifies an event across redeliveries and across both receivers.

    With DingTalk's event id (Stream mode's ``eventId`` header, which the Stream receiver puts in the event as
    ``EventId``, or an id a push's payload carries), the id alone: the same event taken once over HTTP and once
    over Stream is then recorded once. Without one, the payload (sha256 of its canonical JSON): DingTalk resends
    an unacknowledged push with a new timestamp, nonce and signature but the same payload.
    """
    event_id = dingtalk_event_id(event)
    if event_id is not None:
        return hashlib.sha256(f"eventId\n{event_id}".encode("utf-8", "surrogatepass")).hexdigest()
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def event_type(event: Mapping[str, Any]) -> str:
    """Return the event's EventType, or ``unknown`` when it has none worth the name."""
    value = event.get("EventType")
    if isinstance(value, str) and value and len(value) <= _MAX_TYPE_LENGTH:
        return value
    return "unknown"


def event_ids(event: Mapping[str, Any]) -> dict[str, list[str]]:
    """Return the ids an event names (ID_FIELDS only), each as a list of strings."""
    ids: dict[str, list[str]] = {}
    for name in ID_FIELDS:
        value = event.get(name)
        values = value if isinstance(value, list) else [value]
        kept = [
            str(v)[:_MAX_ID_LENGTH]
            for v in values[:_MAX_IDS]
            if isinstance(v, str | int) and not isinstance(v, bool) and v != ""
        ]
        if kept:
            ids[name] = kept
    return ids


def _event_time_ms(event: Mapping[str, Any], default: int) -> int:
    """The event's own TimeStamp in ms (DingTalk sends a string of ms), else ``default``."""
    raw = event.get("TimeStamp")
    text = str(raw) if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
    if not text.isdigit() or len(text) > 16:
        return default
    value = int(text)
    return value if value > 100_000_000_000 else value * 1000


def _format_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """One recorded event, as read back from the stream."""

    id: str
    type: str
    time: int  # ms since the epoch: the event's own TimeStamp, or when it arrived
    received: int  # ms since the epoch
    ids: dict[str, list[str]] = field(default_factory=dict)
    dedupe: str = ""
    source: str = ""  # "push" or "stream"; "" for entries recorded before receivers were named
    event_id: str = ""  # DingTalk's own id of the event, when it gave one

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[str, str]) -> Event:
        try:
            ids = json.loads(fields.get("ids") or "{}")
        except ValueError:
            ids = {}
        return cls(
            id=entry_id,
            type=fields.get("type", "unknown"),
            time=int(fields.get("time") or 0),
            received=int(fields.get("received") or 0),
            ids=ids if isinstance(ids, dict) else {},
            dedupe=fields.get("dedupe", ""),
            source=fields.get("source", ""),
            event_id=fields.get("event_id", ""),
        )

    def describe(self) -> str:
        """One line for a person: time, type, ids, and the receiver that took it."""
        ids = " ".join(f"{name}={','.join(values)}" for name, values in sorted(self.ids.items()))
        via = f" via {self.source}" if self.source else ""
        return f"{_format_ms(self.time)}  {self.type:<24} {ids or '-'}  [{self.id}]{via}".rstrip()


@dataclass(frozen=True)
class AppendResult:
    """What append did: ``stored`` is False for a duplicate, whose ``entry_id`` is the first delivery's;
    ``replication`` says whether a replica of the primary has it."""

    stored: bool
    entry_id: str
    replication: Replication = Replication(0, 0)


class NotDurable(StoreUnavailable):
    """The event is on the store's primary, but none of its replicas acknowledged it in time."""


class EventLog:
    """One corp's event log in the store."""

    def __init__(
        self,
        store: redis.Redis,
        corpid: str,
        *,
        maxlen: int = STREAM_MAXLEN,
        dedupe_ttl: int = DEDUPE_TTL,
    ) -> None:
        self._store = store
        self._corpid = corpid
        self._maxlen = max(1, int(maxlen))
        self._dedupe_ttl = max(1, int(dedupe_ttl))
        self._append_once = store.register_script(_APPEND_ONCE)

    @property
    def key(self) -> str:
        return stream_key(self._corpid)

    def _seen_key(self, digest: str) -> str:
        return corp_key(self._corpid, "event-seen", digest)

    def _request_key(self, signature: str, nonce: str) -> str:
        digest = hashlib.sha256(f"{signature}\n{nonce}".encode("utf-8", "surrogatepass")).hexdigest()
        return corp_key(self._corpid, "callback-seen", digest[:32])

    def append(
        self,
        event: Mapping[str, Any],
        *,
        received_ms: int | None = None,
        source: str | None = None,
        ack_timeout: float = 1.0,
    ) -> AppendResult:
        """Record a decrypted event unless it was recorded before (within DEDUPE_TTL), by either receiver
        (`source`); when the primary has replicas, wait up to ``ack_timeout`` seconds for one to have it (the
        result says whether one did)."""
        if received_ms is None:
            received_ms = time.time_ns() // 1_000_000
        digest = dedupe_id(event)
        fields = {
            "type": event_type(event),
            "time": str(_event_time_ms(event, received_ms)),
            "received": str(received_ms),
            "ids": json.dumps(event_ids(event), ensure_ascii=False, separators=(",", ":")),
            "dedupe": digest[:32],
        }
        if source is not None:
            fields["source"] = source
        event_id = dingtalk_event_id(event)
        if event_id is not None:
            fields["event_id"] = event_id
        args: list[str | int] = [self._dedupe_ttl, self._maxlen]
        for name, value in fields.items():
            args.extend((name, value))
        keys = [self._seen_key(digest[:32]), self.key]

        def queue(pipe: Any) -> None:
            self._append_once(keys=keys, args=args, client=pipe)

        results, replication = write_replicated(self._store, self.key, queue, timeout=ack_timeout)
        stored, entry_id = results[0]
        return AppendResult(stored=bool(int(stored)), entry_id=str(entry_id), replication=replication)

    def claim_request(self, signature: str, nonce: str, ttl: int) -> bool:
        """Mark a (signature, nonce) pair as seen; False if it was seen within ``ttl`` seconds (a replay)."""
        return bool(self._store.set(self._request_key(signature, nonce), "1", nx=True, ex=max(1, int(ttl))))

    def find(self, event: Mapping[str, Any]) -> str | None:
        """The stream id under which this event was recorded (within DEDUPE_TTL), or None."""
        value = self._store.get(self._seen_key(dedupe_id(event)[:32]))
        return None if value is None else str(value)

    def recent(self, count: int = 20) -> list[Event]:
        """Return the newest ``count`` events, oldest first."""
        entries = self._store.xrevrange(self.key, count=max(1, int(count)))
        return [Event.from_entry(entry_id, fields) for entry_id, fields in reversed(entries)]

    def follow(self, after: str = "$", *, block_ms: int = 1000, idle_timeout: float | None = None) -> Iterator[Event]:
        """Yield events appended after ``after`` (a stream id; ``$`` = from now) as they arrive.

        ``block_ms`` stays below the store client's socket timeout; ``idle_timeout`` (seconds) ends the
        iteration after that long without an event (None: never).
        """
        last = after
        if last == "$":
            newest = self._store.xrevrange(self.key, count=1)
            last = newest[0][0] if newest else "0-0"
        idle_since = time.monotonic()
        while True:
            answer = self._store.xread({self.key: last}, count=100, block=max(1, int(block_ms)))
            got = False
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    last = entry_id
                    got = True
                    yield Event.from_entry(entry_id, fields)
            if got:
                idle_since = time.monotonic()
            elif idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                return


def record_durably(
    store: redis.Redis,
    corpid: str,
    event: Mapping[str, Any],
    *,
    ack_timeout: float,
    received_ms: int | None = None,
    source: str | None = None,
) -> AppendResult:
    """Record an event so that it survives the loss of the store's primary, before anyone acknowledges it.

    Stored once (a redelivery is a duplicate), and on a replica too when the primary has replicas; NotDurable (503
    `store_unavailable`, so DingTalk delivers the event again) when no replica acknowledged it within
    ``ack_timeout`` seconds. Redis errors (primary unreachable, read-only, full) propagate as they are: 503 too.
    """
    result = EventLog(store, corpid).append(event, received_ms=received_ms, source=source, ack_timeout=ack_timeout)
    if not result.replication.enough:
        raise NotDurable(
            f"The event is on the store's primary, but no replica acknowledged it within {ack_timeout:g} s "
            f"({result.replication.replicas} connected)",
            hint="Redis replication is lagging or a replica is cut off; DingTalk delivers the event again later, "
            "and it is stored once. Check the replicas (INFO replication) if this persists.",
            retry_after=2,
        )
    return result
