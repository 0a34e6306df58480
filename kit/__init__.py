"""The ground floor: pure utilities every other package may use (sealing, store key names, the near cache).

Nothing here imports Flask or any other package of the gateway (import-linter checks it: pyproject.toml).
"""
