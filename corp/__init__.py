"""The corp: its registry (sealed secrets, registration ids), the runtime every request uses, unionid -> userid
links, DingTalk pushes and the event log, and the `corp check` self-test. The CLI is web/cli.py."""
