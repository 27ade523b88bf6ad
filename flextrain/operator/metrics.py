"""The operator's own Prometheus metrics (FLEXTRAIN_OPERATOR_SELF_METRICS_PORT; the
chart: `operator.metricsPort`, a Service and an optional ServiceMonitor). Read from the
runtime's counters at scrape time, so the hot path pays nothing:

| metric | labels | meaning |
|---|---|---|
| `flextrain_operator_reconciles_total` | | reconcile passes of FlexTrainJobs |
| `flextrain_operator_reconcile_errors_total` | | passes that failed (an API error; retried with backoff) |
| `flextrain_operator_api_requests_total` | `verb`, `code` | requests of the operator's handlers to the API server by HTTP method and status (0: no answer); kopf's own watches are not counted |
| `flextrain_operator_jobs` | `phase` | FlexTrainJobs served now, by the phase last written |
| `flextrain_operator_leader` | | 1 while this replica reconciles (holds the Lease, or runs without leader election), 0 while it stands by |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flextrain.api.conditions import JobPhase
from flextrain.operator.runtime import Runtime

log = logging.getLogger("flextrain.operator")


class OperatorCollector(Collector):
    """The metrics of one Runtime, computed when scraped."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        stats = self.runtime.stats
        yield CounterMetricFamily(
            "flextrain_operator_reconciles", "Reconcile passes of FlexTrainJobs.", value=stats["reconciles"]
        )
        yield CounterMetricFamily(
            "flextrain_operator_reconcile_errors",
            "Reconcile passes that failed on an API error (retried with backoff).",
            value=stats["reconcile_errors"],
        )
        requests = CounterMetricFamily(
            "flextrain_operator_api_requests",
            "Requests of the operator's handlers to the API server, by HTTP method and status (0: no answer).",
            labels=["verb", "code"],
        )
        for (verb, code), count in sorted(self.runtime.kube.responses.items()):
            requests.add_metric([verb, str(code)], count)
        yield requests
        jobs = GaugeMetricFamily("flextrain_operator_jobs", "FlexTrainJobs served, by phase.", labels=["phase"])
        phases = self.runtime.phases()
        for phase in [*(p.value for p in JobPhase), "Unknown"]:
            jobs.add_metric([phase], phases.get(phase, 0))
        yield jobs
        yield GaugeMetricFamily(
            "flextrain_operator_leader",
            "1 while this replica reconciles (holds the Lease, or runs without leader election), 0 on standby.",
            value=1 if self.runtime.leader else 0,
        )


def serve(runtime: Runtime, port: int) -> Callable[[], None]:
    """Serve the runtime's metrics on `port` (all interfaces) from a thread; returns what
    stops it. A port that cannot be bound is logged, not fatal: reconciling matters more
    than its metrics."""
    registry = CollectorRegistry()
    registry.register(OperatorCollector(runtime))
    try:
        server, _ = start_http_server(port, registry=registry)
    except OSError as exc:
        log.error("cannot serve the operator's metrics on port %d: %s", port, exc)
        return lambda: None
    log.info("operator metrics on port %d", port)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
