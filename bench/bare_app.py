"""The baseline for issue 5's ratio: a bare Flask JSON endpoint, served with the gateway's gunicorn settings.

`/bare` answers a body of the same shape and size as `/channel/config`, with nothing behind it (no store, no
schema, no signing, no hooks), so gateway/bare throughput is the cost of the gateway's own work per request.
"""

from __future__ import annotations

import secrets
import time

from flask import Flask, Response, jsonify


def create_app() -> Flask:
    """Build the baseline app."""
    app = Flask(__name__)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    @app.get("/bare")
    def bare() -> Response:
        return jsonify(
            {
                "agentId": "1000001",
                "corpId": "dingdemo0001",
                "nonceStr": secrets.token_urlsafe(12),
                "signature": "0f9de62fce790f9a083d5c99e95740ceb90c27ed",
                "timeStamp": str(int(time.time() * 1000)),
                "type": 1,
                "url": "https://127.0.0.1:8443/channel/login?corpid=dingdemo0001&agentid=1000001",
            }
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app
