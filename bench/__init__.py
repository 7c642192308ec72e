"""Benchmarks, run as modules (`python -m bench.list_latency`): they print figures, assert
nothing."""
