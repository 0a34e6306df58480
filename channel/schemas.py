"""Request schemas of the channel API (marshmallow): field-level messages for `invalid_request`."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, validate

from gateway.validation import AGENT_ID_RE, CORPID_RE, CORPID_SHAPE

CORPID = validate.Regexp(CORPID_RE, error=f"must be {CORPID_SHAPE}")


class ConfigQuery(Schema):
    class Meta:
        # A GET may carry cache-busters (`_=…`) and tracking parameters: ignore what we do not use.
        unknown = EXCLUDE

    corpid = fields.String(required=True, validate=CORPID)
    agentid = fields.String(required=True, validate=validate.Regexp(AGENT_ID_RE, error="must be a number"))
    url = fields.String(load_default=None, validate=validate.Length(min=1, max=4096))


class LoginBody(Schema):
    class Meta:
        unknown = RAISE

    corpid = fields.String(required=True, validate=CORPID)
    code = fields.String(required=True, validate=validate.Length(min=1, max=256))
    # The OpenID Connect provider's handle, from the page's URL (gateway-contract.md, /oauth/authorize).
    oauth = fields.String(
        load_default=None,
        validate=validate.Regexp(r"^[A-Za-z0-9_\-]{16,128}$", error="must be the oauth handle of the page's URL"),
    )


class ConfigErrorBody(Schema):
    class Meta:
        unknown = RAISE

    corpid = fields.String(required=True, validate=CORPID)
    agentid = fields.String(load_default=None, validate=validate.Length(max=20))
    url = fields.String(load_default=None, validate=validate.Length(max=4096))
    errorCode = fields.Integer(required=True, strict=False)  # noqa: N815 - the page's dd.error field name
    errorMessage = fields.String(load_default="", validate=validate.Length(max=1000))  # noqa: N815
    # What DingTalk checked (issue 22): the values the page passed to dd.config, and the URL the gateway signed for
    # it. Nothing secret: the page holds them all, and a signature is good for one ticket, nonce, time and URL.
    signedUrl = fields.String(load_default=None, validate=validate.Length(max=4096))  # noqa: N815
    nonceStr = fields.String(load_default=None, validate=validate.Length(max=64))  # noqa: N815
    timeStamp = fields.String(load_default=None, validate=validate.Length(max=20))  # noqa: N815
    signature = fields.String(load_default=None, validate=validate.Length(max=128))
    corpId = fields.String(load_default=None, validate=validate.Length(max=64))  # noqa: N815
    agentId = fields.String(load_default=None, validate=validate.Length(max=20))  # noqa: N815
    type = fields.Integer(load_default=None, strict=False)
    # Which call failed: dd.config (the default), dd.ready (timed out) or requestAuthCode.
    stage = fields.String(
        load_default="dd.config", validate=validate.OneOf(["dd.config", "dd.ready", "requestAuthCode"])
    )
