"""Where the web layer finds the runtime app.py composed (corp/runtime.py): one Flask extension slot."""

from __future__ import annotations

from flask import Flask, current_app

from corp.runtime import Runtime

EXTENSION = "dtgw.runtime"


def get_runtime(app: Flask | None = None) -> Runtime:
    return (app or current_app).extensions[EXTENSION]
