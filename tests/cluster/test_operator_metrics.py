"""The operator's own metrics endpoint, as the chart configures it, scraped while it
serves a job on the real control plane."""

from __future__ import annotations

import re
import urllib.request

from kubernetes import client

from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.test_operator import Jobs, factory_job


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_the_operator_counts_reconciles_requests_and_jobs_by_phase(
    api: client.ApiClient, operator: install.OperatorProcess, namespace: str
) -> None:
    assert install.chart_operator_env(api)["FLEXTRAIN_OPERATOR_SELF_METRICS_PORT"] == "8081"  # the chart's
    port = int(operator.env["FLEXTRAIN_OPERATOR_SELF_METRICS_PORT"])  # a free one here
    before = _value(_scrape(port), "flextrain_operator_reconciles_total")
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("counted", namespace))
    wait_for(lambda: jobs.all_children_created("counted", 3), timeout=60, what="the job's children")

    def scraped() -> str | None:
        text = _scrape(port)
        return text if _value(text, "flextrain_operator_reconciles_total") > before else None

    text = wait_for(scraped, timeout=30, what="more reconciles in the metrics")
    assert _value(text, 'flextrain_operator_api_requests_total{code="201",verb="POST"}') >= 8  # its 8 children
    assert re.search(r'^flextrain_operator_jobs\{phase="(Pending|Running)"\} [1-9]', text, re.M), text
    assert "flextrain_operator_reconcile_errors_total" in text
