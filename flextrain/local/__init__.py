"""The embedded runner behind `flextrain run`: aggregator + trainer processes on one machine."""
