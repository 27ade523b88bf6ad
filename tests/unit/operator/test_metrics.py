"""The operator's own metrics, read from the runtime when scraped."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from flextrain.operator.config import OperatorSettings
from flextrain.operator.metrics import OperatorCollector
from flextrain.operator.runtime import Runtime, _JobMemory


def test_metrics_count_reconciles_errors_requests_and_jobs_by_phase() -> None:
    runtime = Runtime(OperatorSettings())
    runtime.stats.update(reconciles=7, reconcile_errors=2)
    runtime.kube.responses.update({("POST", 201): 5, ("PATCH", 200): 3, ("POST", 409): 1, ("GET", 0): 1})
    for key, phase in ((("ns", "a"), "Running"), (("ns", "b"), "Running"), (("ns", "c"), None)):
        runtime._jobs[key] = _JobMemory(phase=phase)
    registry = CollectorRegistry()
    registry.register(OperatorCollector(runtime))
    text = generate_latest(registry).decode()
    assert "flextrain_operator_reconciles_total 7.0" in text
    assert "flextrain_operator_reconcile_errors_total 2.0" in text
    assert 'flextrain_operator_api_requests_total{code="201",verb="POST"} 5.0' in text
    assert 'flextrain_operator_api_requests_total{code="0",verb="GET"} 1.0' in text
    assert 'flextrain_operator_jobs{phase="Running"} 2.0' in text
    assert 'flextrain_operator_jobs{phase="Unknown"} 1.0' in text
    assert 'flextrain_operator_jobs{phase="Succeeded"} 0.0' in text


def test_the_leader_gauge_says_whether_this_replica_reconciles() -> None:
    runtime = Runtime(OperatorSettings())
    registry = CollectorRegistry()
    registry.register(OperatorCollector(runtime))
    assert "flextrain_operator_leader 0.0" in generate_latest(registry).decode()  # standing by
    runtime.leader = True
    assert "flextrain_operator_leader 1.0" in generate_latest(registry).decode()
