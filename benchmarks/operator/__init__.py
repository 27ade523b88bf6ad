"""Operator benchmark: `flextrain operator` (a real process) against a real control plane
(real.py, the default) or the Kubernetes emulator of the test suite (bench.py)."""
