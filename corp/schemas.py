"""Validation of a corp's registration (used by the CLI; the same rules for any future admin API)."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates

from gateway.validation import AGENT_ID_RE, CORPID_RE, CORPID_SHAPE, UrlRefused, canonical_origin, parse_web_url
from oapi.callback_crypto import AES_KEY_RE
from oapi.signing import DEFAULT_HASH, HASHES

_SIGNED_INTEGER_RE = re.compile(r"^\s*[+-]?[0-9]+\s*$")


def parse_origin(value: str) -> str:
    """Return the canonical `scheme://host[:port]` form, or raise ValueError with a reason and a hint.

    The rule (what a browser would send as `Origin`) lives in gateway.validation, shared with the CORS layer.
    """
    try:
        return canonical_origin(value.strip())
    except UrlRefused as e:
        raise ValueError(f"{e.reason}. {e.hint}") from None


class CorpRegistrationSchema(Schema):
    """What `flask corp add` accepts."""

    corpid = fields.String(required=True, validate=validate.Regexp(CORPID_RE, error=f"corpid must be {CORPID_SHAPE}"))
    corp_secret = fields.String(required=True, validate=validate.Length(min=1, max=256))
    channel_secret = fields.String(required=True, validate=validate.Length(min=1, max=256))
    agent_id = fields.String(required=True)
    origins = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    sign_hash = fields.String(load_default=DEFAULT_HASH, validate=validate.OneOf(list(HASHES)))
    callback_token = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    aes_key = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(AES_KEY_RE, error="aes key (EncodingAESKey) must be exactly 43 letters/digits"),
    )
    callback_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))
    landing_url = fields.String(load_default=None, allow_none=True)

    @validates("agent_id")
    def _agent_id(self, value: str, **_: Any) -> None:
        where = "the AgentId on the app's page in the DingTalk developer console"
        if _SIGNED_INTEGER_RE.match(value) and not AGENT_ID_RE.match(value):
            raise ValidationError(f"agent id must be a positive whole number ({where}), not {value.strip()}")
        if not AGENT_ID_RE.match(value):
            raise ValidationError(f"agent id must be a number of up to 20 digits ({where}), not {value!r}")
        if int(value) == 0:
            raise ValidationError(f"agent id must be a positive whole number ({where}), not 0")

    @validates("origins")
    def _origins(self, value: list[str], **_: Any) -> None:
        for origin in value:
            try:
                parse_origin(origin)
            except ValueError as e:
                raise ValidationError(str(e)) from e

    @validates("landing_url")
    def _landing(self, value: str | None, **_: Any) -> None:
        if value is None:
            return
        # Read as the browser that navigates there reads it (gateway.validation), not as urlsplit does.
        try:
            parse_web_url(value)
        except UrlRefused as e:
            raise ValidationError(f"landing url {e.reason}") from None


def first_error(err: ValidationError) -> str:
    """One line out of marshmallow's nested messages, for the CLI."""
    messages = err.normalized_messages()
    field, problems = next(iter(messages.items()))
    if isinstance(problems, dict):
        problems = [m for sub in problems.values() for m in (sub if isinstance(sub, list) else [sub])]
    text = problems[0] if isinstance(problems, list) and problems else str(problems)
    return f"{field}: {text}"
