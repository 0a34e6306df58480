"""Request schemas of the support API (marshmallow): field-level messages for `invalid_request`.

Every string the console accepts is checked to be encodable as UTF-8: `json.loads` turns `"\\ud800"` into a str
with a lone surrogate, which would otherwise fail later (hashing, the JSON answer, Redis) as a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields


class Text(fields.Field[str]):
    """A non-empty string, stripped (a JSON number is taken as its decimal text), UTF-8 encodable, bounded."""

    def __init__(self, *, max_length: int, **kwargs: Any) -> None:
        super().__init__(required=True, **kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError("must be a string")
        text = str(value).strip()
        if not text:
            raise ValidationError("must not be empty")
        if len(text) > self.max_length:
            raise ValidationError(f"must be at most {self.max_length} characters")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError("is not valid Unicode (a lone surrogate escape such as \\ud800?)") from None
        return text


class OptionalText(Text):
    """Text that may be left out, null or blank (then "")."""

    def __init__(self, *, max_length: int) -> None:
        fields.Field.__init__(self, required=False, load_default="", allow_none=True)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if value is None or (isinstance(value, str) and not value.strip()):
            return ""
        return super()._deserialize(value, attr, data, **kwargs)


class SignatureCheckBody(Schema):
    """What a page passed to dd.config, and the URL the gateway signed for it (`signedUrl`, optional): from the
    page's dd.error report in a trace entry, or pasted. Unknown fields are ignored."""

    class Meta:
        unknown = EXCLUDE

    url = Text(max_length=4096)
    nonceStr = Text(max_length=256)  # noqa: N815 - dd.config's field names
    timeStamp = Text(max_length=32)  # noqa: N815
    signature = Text(max_length=128)
    signedUrl = OptionalText(max_length=4096)  # noqa: N815
    corpId = OptionalText(max_length=64)  # noqa: N815
    agentId = OptionalText(max_length=32)  # noqa: N815


SIGNATURE_CHECK = SignatureCheckBody()
