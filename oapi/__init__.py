"""DingTalk itself: the HTTP client, errcodes and typed errors, backoff, the credential cache, per-corp API clients,
the dd.config signature and callback crypto. It imports neither Flask nor the gateway (pyproject.toml contracts)."""
