"""Benchmark package (spec filled in by the runner)."""
