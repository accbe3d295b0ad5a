"""Benchmarks: performance goals, measured (not tests)."""
