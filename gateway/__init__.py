"""App-wide plumbing shared by every part: configuration, errors, the store, sealing, metrics, traces."""
