"""Metrics: pure functions, arrays in and arrays out (``verification`` for the 10-fold pair protocol)."""
