"""Request JSON that can never crash a view: depth bombs and unencodable strings are malformed input."""

from __future__ import annotations

import json
from typing import Any

from flask.json.provider import DefaultJSONProvider


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, but loading rejects what the rest of the gateway could not handle.

    `json.loads` accepts `[[[…]]]` thousands deep (RecursionError later, or at once) and `"\\ud800"` (a lone
    surrogate: a str that no UTF-8 encoder, Redis or requests, will take). Both become ValueError here, which
    `request.get_json(silent=True)` already treats as "not JSON", so every view answers 400 invalid_request.
    """

    ensure_ascii = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            obj = json.loads(s, **kwargs)
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except (RecursionError, UnicodeError) as e:
            raise ValueError(f"unacceptable JSON: {type(e).__name__}") from None
        return obj
