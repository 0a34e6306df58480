"""Validation of a corp's registration (used by the CLI; the same rules for any future admin API)."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates, validates_schema

from corp.registry import CHANNEL, KINDS, MAP_BY, SERVICE_WINDOW, default_hash
from gateway.validation import AGENT_ID_RE, CORPID_RE, CORPID_SHAPE, UrlRefused, canonical_origin, parse_web_url
from oapi.callback_crypto import AES_KEY_RE
from oapi.signing import HASHES

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
    """What `flask corp add` accepts: the secrets of the registration's kind and no other kind's."""

    corpid = fields.String(required=True, validate=validate.Regexp(CORPID_RE, error=f"corpid must be {CORPID_SHAPE}"))
    kind = fields.String(load_default=CHANNEL, validate=validate.OneOf(KINDS))
    corp_secret = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    channel_secret = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    app_key = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(r"^[A-Za-z0-9_-]{1,64}$", error="app key must be the AppKey (Client ID) of the app"),
    )
    app_secret = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    map_via = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(CORPID_RE, error=f"map via must be a corpid ({CORPID_SHAPE})"),
    )
    map_by = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MAP_BY))
    require_follow = fields.Boolean(load_default=False)
    agent_id = fields.String(required=True)
    origins = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    sign_hash = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(list(HASHES)))
    callback_token = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=256))
    aes_key = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(AES_KEY_RE, error="aes key (EncodingAESKey) must be exactly 43 letters/digits"),
    )
    callback_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=128))
    landing_url = fields.String(load_default=None, allow_none=True)

    @validates_schema
    def _secrets_of_kind(self, data: dict[str, Any], **_: Any) -> None:
        """Each kind takes its own credentials; another kind's are refused, so a mix-up is caught at `add`."""
        kind = data.get("kind", CHANNEL)
        needed: tuple[str, ...]
        foreign: tuple[str, ...]
        if kind == CHANNEL:
            needed, foreign = ("corp_secret", "channel_secret"), ("app_key", "app_secret", "map_via", "map_by")
        else:
            needed, foreign = ("app_key", "app_secret"), ("corp_secret", "channel_secret")
        for name in needed:
            if not data.get(name):
                raise ValidationError(f"--{name.replace('_', '-')} is required for kind {kind}", name)
        for name in foreign:
            if data.get(name):
                raise ValidationError(f"--{name.replace('_', '-')} does not apply to kind {kind}", name)
        if kind != SERVICE_WINDOW:
            if data.get("require_follow"):
                raise ValidationError(f"--require-follow applies to kind service-window only, not {kind}", "kind")
            if data.get("map_via"):
                raise ValidationError(f"--map-via applies to kind service-window only, not {kind}", "map_via")
        if data.get("map_by") and not data.get("map_via"):
            raise ValidationError("--map-by needs --map-via (the real org to map followers into)", "map_by")
        if data.get("map_via") and data["map_via"] == data.get("corpid"):
            raise ValidationError("--map-via names the real org, not the service window's own virtual org", "map_via")

    @post_load
    def _defaults_of_kind(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        data["sign_hash"] = data.get("sign_hash") or default_hash(data["kind"])
        data["map_by"] = data.get("map_by") or "unionid"
        return data

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


def first_error(err: ValidationError, *, flags: bool = False) -> str:
    """One line out of marshmallow's nested messages, for the CLI (`flags`: a message that names its option
    already, such as "--app-key is required for kind internal", is given as it is)."""
    messages = err.normalized_messages()
    field, problems = next(iter(messages.items()))
    if isinstance(problems, dict):
        problems = [m for sub in problems.values() for m in (sub if isinstance(sub, list) else [sub])]
    text = problems[0] if isinstance(problems, list) and problems else str(problems)
    if flags and text.startswith("--"):
        return text
    return f"{field}: {text}"
