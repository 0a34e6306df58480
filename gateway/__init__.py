"""App-wide plumbing below the flows: settings, the contract's error tree, the store, the trace and its redaction,
URL and input rules, logs with request ids."""
