"""One way to validate input: a marshmallow schema, whose field errors become one `invalid_request`."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError

from gateway.errors import InvalidRequest


def load(schema: Schema, data: Any, *, what: str = "request", hint: str | None = None) -> dict[str, Any]:
    """Validate `data`; on failure raise InvalidRequest naming every field and its problem."""
    try:
        return dict(schema.load(data))
    except ValidationError as e:
        detail = "; ".join(
            f"{field}: {' '.join(str(m) for m in msgs) if isinstance(msgs, list) else msgs}"
            for field, msgs in sorted(e.normalized_messages().items())
        )
        raise InvalidRequest(f"Invalid {what}: {detail}", hint=hint) from None
