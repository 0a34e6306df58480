"""The DingTalk push receiver: ``POST /ding/callback/<corpid>`` (oapi doc §5).

A push is checked in this order, and the first failure answers:

    body at most GATEWAY_CALLBACK_MAX_BODY (1 MiB)              else 413 invalid_request
    signature/msg_signature, timestamp/timeStamp, nonce present else 400 invalid_request
    body is a JSON object with a string ``encrypt``             else 400 invalid_request
    corp registered with a callback token and EncodingAESKey   else 404 unknown_corp
    signature checks (before anything is decrypted)             else 403 signature_invalid
    timestamp within ±GATEWAY_CALLBACK_WINDOW (s or ms)         else 403 signature_invalid
    payload decrypts to a JSON object for our receiver key      else 400 decrypt_failed
    (signature, nonce) not seen in the last 2 windows           else 403 signature_invalid (replayed)

Then corp.intake.record_and_apply records the event in the corp's event log (corp.events.record_durably:
duplicates stored once, by DingTalk's event id when the payload carries one, so an event also taken over Stream
mode is not recorded twice; on a replica of the store's primary when it has replicas, else 503) and applies its
effects, all before the encrypted reply is sent: an acknowledged event is never lost, not even with the primary.
Nothing decrypted is ever logged or put in an error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema
from prometheus_client import Counter

from corp.events import EventLog
from corp.intake import record_and_apply
from corp.runtime import Runtime
from gateway.errors import DecryptFailed, GatewayError, InvalidRequest, SignatureInvalid, UnknownCorp
from gateway.validation import json_object, load
from oapi.callback_crypto import CallbackCrypto, CallbackCryptoError

log = logging.getLogger(__name__)

CALLBACKS = Counter("dtgw_callbacks_total", "DingTalk pushes received", ["event_type", "outcome"])

#: Event types named in oapi doc §5; anything else is counted as ``other`` to bound the label's values.
KNOWN_EVENT_TYPES = frozenset(
    {
        "check_url",
        "user_add_org",
        "user_modify_org",
        "user_leave_org",
        "org_admin_add",
        "org_admin_remove",
        "org_dept_create",
        "org_dept_modify",
        "org_dept_remove",
        "org_remove",
        "chat_add_member",
        "chat_remove_member",
        "chat_quit",
        "chat_update_owner",
        "chat_update_title",
        "chat_disband",
        "suite_ticket",
        "tmp_auth_code",
        "change_auth",
        "suite_relieve",
        "check_create_suite_url",
        "check_update_suite_url",
        "official_account_follow",
        "official_account_unfollow",
    }
)
#: Events whose reply echoes the event's Random instead of "success".
ECHO_EVENTS = frozenset({"check_create_suite_url", "check_update_suite_url"})

_MS_THRESHOLD = 100_000_000_000  # a timestamp above this is in milliseconds (1e11 s is the year 5138)
_TIMESTAMP = validate.Regexp(r"^[0-9]{1,16}$", error="must be a number (seconds or milliseconds)")
_TEXT = validate.Length(min=1, max=256)


@dataclass(frozen=True)
class Push:
    """One push as it arrived: the query's signature, timestamp and nonce, and the body's ciphertext."""

    signature: str
    timestamp: str
    nonce: str
    encrypt: str


class PushQuery(Schema):
    """The query string; older pushes say ``signature``/``timestamp``, newer ``msg_signature``/``timeStamp``."""

    class Meta:
        unknown = EXCLUDE

    signature = fields.String(load_default=None, validate=_TEXT)
    msg_signature = fields.String(load_default=None, validate=_TEXT)
    timestamp = fields.String(load_default=None, validate=_TIMESTAMP)
    timestamp_ms = fields.String(data_key="timeStamp", load_default=None, validate=_TIMESTAMP)
    nonce = fields.String(load_default=None, validate=_TEXT)

    @validates_schema
    def _require(self, data: dict[str, Any], **_: Any) -> None:
        missing = [
            name
            for name, present in (
                ("signature (or msg_signature)", data.get("signature") or data.get("msg_signature")),
                ("timestamp (or timeStamp)", data.get("timestamp") or data.get("timestamp_ms")),
                ("nonce", data.get("nonce")),
            )
            if not present
        ]
        if missing:
            raise ValidationError(f"missing query parameter: {', '.join(missing)}", "_query")


class PushBody(Schema):
    class Meta:
        unknown = EXCLUDE

    encrypt = fields.String(required=True, validate=validate.Length(min=1))


_PUSH_HINT = 'DingTalk pushes POST ?signature=…&timestamp=…&nonce=… with the body {"encrypt": "…"}.'


def parse_push(args: Any, body: Any) -> Push:
    """Build a Push from the request's query mapping and parsed JSON body (None if the body is not JSON)."""
    query = load(
        PushQuery(), dict(args.items()) if hasattr(args, "items") else args, what="callback query", hint=_PUSH_HINT
    )
    body = json_object(
        body,
        what="callback body",
        hint='DingTalk pushes a JSON body {"encrypt": "…"}; check that nothing in front rewrites it.',
    )
    data = load(PushBody(), body, what="callback body", hint=_PUSH_HINT)
    return Push(
        signature=query["signature"] or query["msg_signature"],
        timestamp=query["timestamp"] or query["timestamp_ms"],
        nonce=query["nonce"],
        encrypt=data["encrypt"],
    )


def check_timestamp(timestamp: str, window: int, now: float) -> None:
    """Raise SignatureInvalid unless ``timestamp`` (s or ms) is within ``window`` seconds of ``now``."""
    value = int(timestamp)
    seconds = value / 1000 if value > _MS_THRESHOLD else float(value)
    skew = seconds - now
    if abs(skew) > window:
        direction = "ahead of" if skew > 0 else "behind"
        raise SignatureInvalid(
            f"The callback's timestamp is {abs(skew):.0f} s {direction} the gateway's clock (accepted: ±{window} s)",
            hint="Check the clocks: keep the gateway host in sync with NTP. A timestamp far in the past is "
            "also what a replayed request looks like.",
        )


def _refuse(corpid: str, error: CallbackCryptoError) -> GatewayError:
    """Map a crypto failure to the caller's error; the 900xxx code goes to the log and the message only."""
    log.warning("callback refused corpid=%s errcode=%s (%s)", corpid, error.errcode, type(error).__name__)
    if error.kind == "signature_invalid":
        return SignatureInvalid(f"The callback's signature does not check ({error.errcode})")
    return DecryptFailed(f"The callback's payload does not decrypt ({error.errcode}: {error})")


def handle_push(rt: Runtime, corpid: str, push: Push, *, now: float | None = None) -> dict[str, str]:
    """Verify, decrypt and record one push, apply its effects, and return the signed encrypted reply."""
    corp = rt.corp(corpid)
    if not (corp.callback_token and corp.aes_key):
        raise UnknownCorp(
            f"Corp {corpid!r} has no callback registered with this gateway",
            hint="Register the callback: `flask corp add CORPID … --callback-token T --aes-key K`.",
        )
    window = rt.settings.callback_window
    try:
        crypto = CallbackCrypto(corp.callback_token, corp.aes_key, corp.receiver_key)
        crypto.verify(push.signature, push.timestamp, push.nonce, push.encrypt)
    except CallbackCryptoError as e:
        raise _refuse(corpid, e) from e
    check_timestamp(push.timestamp, window, time.time() if now is None else now)
    try:
        event = crypto.decrypt_json(push.encrypt)
    except CallbackCryptoError as e:
        raise _refuse(corpid, e) from e

    events = EventLog(rt.store, corpid)
    # Outlives the timestamp window on either side, so a replay is refused by one check or the other.
    if not events.claim_request(push.signature, push.nonce, 2 * window):
        log.warning("callback refused corpid=%s: replayed signature and nonce", corpid)
        raise SignatureInvalid(
            "Replayed callback: this signature and nonce were already accepted",
            hint="DingTalk signs every delivery, retries included, with a fresh nonce; a repeated request "
            "comes from something else (a proxy resending, or an attacker).",
        )

    intake = record_and_apply(rt, corpid, event, source="push")
    kind, outcome = intake.type, intake.outcome

    answer = "success"
    if kind in ECHO_EVENTS:
        random = event.get("Random")
        if not isinstance(random, str) or not random:
            raise InvalidRequest(f"The {kind} event has no Random to echo")
        answer = random
    label = kind if kind in KNOWN_EVENT_TYPES else "other"
    CALLBACKS.labels(label, outcome).inc()
    log.info("callback corpid=%s type=%s outcome=%s", corpid, label, outcome)
    return crypto.reply(answer)
