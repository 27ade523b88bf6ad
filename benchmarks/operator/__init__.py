"""Operator benchmark: `flextrain operator` (a real process) against the Kubernetes
emulator of the test suite. See bench.py."""
