"""One way to validate input: a marshmallow schema, whose field errors become one `invalid_request`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401 - registers the "werkzeug.url_quote" codec error handler used below
from marshmallow import Schema, ValidationError
from werkzeug.datastructures import MultiDict

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


def parse_query(query_string: str) -> dict[str, str]:
    """A raw WSGI QUERY_STRING parsed as `request.args` parses it (first value of each name).

    For callers that cache by the raw string, to skip parsing on a hit. A query that is not UTF-8 is
    `invalid_request` (werkzeug itself raises UnicodeDecodeError).
    """
    # The call werkzeug's Request.args makes: invalid percent-escapes stay as they were.
    return MultiDict(parse_qsl(query_text(query_string), keep_blank_values=True, errors="werkzeug.url_quote")).to_dict()


def query_text(query_string: str) -> str:
    """A raw WSGI QUERY_STRING (Latin-1 by the WSGI rules) as the UTF-8 text it must be, or `invalid_request`."""
    try:
        return query_string.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise InvalidRequest(
            "The query string is not UTF-8", hint="Percent-encode each parameter value (encodeURIComponent)."
        ) from None
