"""Aggregator round-overhead benchmark against Flower; run `python -m benchmarks.aggregation`."""
