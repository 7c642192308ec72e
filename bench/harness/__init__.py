"""The benchmark harness of `posflow bench`: posflow against the engine's floor (README.md)."""
