"""What the gateway asserts about people to other systems: its signing keys, the tokens it signs, and the
OpenID Connect provider's clients, codes and handles. Knows the store and sealing, nothing of DingTalk or Flask."""
