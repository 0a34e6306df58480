"""The service window: channel token and ticket, dd.config signing, follower login, the H5 page."""
