"""The gRPC aggregator: holds the global model, validates and merges per-layer updates (issue: aggregator and trainer)."""
