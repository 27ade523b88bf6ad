"""Prometheus metrics of the aggregator, on their own registry (served over HTTP by
`flextrain aggregator --metrics-port`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flextrain.contract.refusals import Reason


class AggregatorMetrics:
    """All metrics of one aggregator; names are prefixed `flextrain_`."""

    def __init__(self, job: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"job_name": job}
        self._labels = labels
        self.rounds_completed = Counter(
            "flextrain_rounds_completed", "Rounds merged into the global model", ["job_name"], registry=self.registry
        ).labels(**labels)
        self.round_seconds = Histogram(
            "flextrain_round_duration_seconds",
            "Wall time from a round opening to its merge",
            ["job_name"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        ).labels(**labels)
        self.bytes_received = Counter(
            "flextrain_bytes_received", "Update payload bytes received", ["job_name", "tier"], registry=self.registry
        )
        self.bytes_sent = Counter(
            "flextrain_bytes_sent", "Model payload bytes sent", ["job_name", "tier"], registry=self.registry
        )
        self.updates_accepted = Counter(
            "flextrain_updates_accepted", "Updates folded into a round", ["job_name", "tier"], registry=self.registry
        )
        self.updates_rejected = Counter(
            "flextrain_updates_rejected", "Requests refused, by reason", ["job_name", "reason"], registry=self.registry
        )
        self.clients_connected = Gauge(
            "flextrain_clients_connected", "Trainers that joined", ["job_name"], registry=self.registry
        ).labels(**labels)
        self.accuracy = Gauge(
            "flextrain_accuracy", "Held-out accuracy of the prefix of each depth", ["job_name", "depth"], registry=self.registry
        )
        self.round = Gauge("flextrain_round", "Rounds completed", ["job_name"], registry=self.registry).labels(**labels)

    def received(self, tier: str, nbytes: int) -> None:
        self.bytes_received.labels(tier=tier, **self._labels).inc(nbytes)
        self.updates_accepted.labels(tier=tier, **self._labels).inc()

    def sent(self, tier: str, nbytes: int) -> None:
        self.bytes_sent.labels(tier=tier, **self._labels).inc(nbytes)

    def rejected(self, reason: Reason) -> None:
        self.updates_rejected.labels(reason=reason.value, **self._labels).inc()

    def set_accuracy(self, depth: int, accuracy: float) -> None:
        self.accuracy.labels(depth=str(depth), **self._labels).set(accuracy)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose /metrics over HTTP on `port` (a daemon thread)."""
        start_http_server(port, addr=addr, registry=self.registry)
