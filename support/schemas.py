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


class SignatureCheckBody(Schema):
    """What a page passed to dd.config. Other fields (corpId, agentId, type: a pasted config) are ignored."""

    class Meta:
        unknown = EXCLUDE

    url = Text(max_length=4096)
    nonceStr = Text(max_length=256)  # noqa: N815 - dd.config's field names
    timeStamp = Text(max_length=32)  # noqa: N815
    signature = Text(max_length=128)


SIGNATURE_CHECK = SignatureCheckBody()
