"""Flower App used by `python -m benchmarks.aggregation` (deployment-engine path)."""
