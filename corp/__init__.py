"""The corp: registry and `flask corp` CLI, the corp-token pipeline, unionid -> userid."""
