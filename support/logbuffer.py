"""Recent log lines of this process, by request id, so a trace entry's request id opens its log lines.

The gateway logs every line with `[request_id]` and never logs secrets, tokens, tickets or codes (house
style 13), so keeping the last lines in memory adds nothing sensitive. Each worker process sees its own lines
only; the full history is in the log files (`grep '[<request id>]'`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from flask import g, has_request_context

from gateway.logs import FORMAT

CAPACITY = 5000


class RecentLines(logging.Handler):
    """Keep the last CAPACITY lines logged during a request, with their request id."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(level=logging.INFO)
        self.lines: deque[tuple[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if not has_request_context():
            return
        request_id = str(g.get("request_id", "") or "")
        if not request_id:
            return
        try:
            record.request_id = request_id
            self.lines.append((request_id, self.format(record)))
        except Exception:  # a log handler must never break the request
            self.handleError(record)

    def for_request(self, request_id: str, limit: int = 200) -> list[str]:
        return [line for rid, line in list(self.lines) if rid == request_id][-limit:]


_HANDLER: RecentLines | None = None
_LOCK = threading.Lock()


def install() -> RecentLines:
    """Attach the one process-wide handler to the root logger (idempotent: apps share it)."""
    global _HANDLER
    with _LOCK:
        if _HANDLER is None:
            _HANDLER = RecentLines()
            logging.getLogger().addHandler(_HANDLER)
        return _HANDLER


def lines_for(request_id: str) -> list[str]:
    return install().for_request(request_id)
