"""The web layer: blueprints, CLI commands, WSGI layers and the one error handler; app.py composes it."""
