"""The legacy service window's flows: the signed dd.config (type 1) and its 52013 report, follower login, the
session token. The DingTalk calls are oapi/channel.py's; the routes are web/channel.py's."""
