"""The tenancy policy on the real API server: the chart's ValidatingAdmissionPolicy
refuses a job that asks for a foreign image, a ServiceAccount or a hostPath at create
time, and the operator refuses the same job (condition, Warning Event, nothing created)
where that policy is not installed."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.test_operator import Jobs, factory_job

HOST_DATA = {"name": "digits", "partition": {"scheme": "iid"}, "source": {"hostPath": {"path": "/"}}}
#: (spec change, words the refusal must hold)
BROKEN: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "image": ({"image": "docker.io/library/busybox:1"}, ("spec.image", "ghcr.io/flextrain/flextrain:")),
    "service account": ({"podTemplate": {"serviceAccountName": "builder"}}, ("serviceAccountName", "no API token")),
    "host path": ({"dataset": HOST_DATA}, ("hostPath", "not allowed")),
}


def _binding_name() -> str:
    return f"{install.RELEASE}-flextrain-job-policy"


@contextlib.contextmanager
def without_admission_policy(api: client.ApiClient) -> Iterator[None]:
    """The chart's policy binding removed for the block, as on a cluster that installed
    the chart with `policy.admission=false`."""
    admission = client.AdmissionregistrationV1Api(api)
    binding = admission.read_validating_admission_policy_binding(_binding_name())
    admission.delete_validating_admission_policy_binding(_binding_name())
    try:
        yield
    finally:
        binding.metadata = client.V1ObjectMeta(name=binding.metadata.name, labels=binding.metadata.labels)
        admission.create_validating_admission_policy_binding(binding)


def _create(jobs: Jobs, body: dict[str, Any]) -> ApiException | None:
    try:
        jobs.create(body)
    except ApiException as exc:
        return exc
    return None


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_admission_policy_refuses_what_the_policy_does_not_allow(
    api: client.ApiClient, installed_chart: subprocess.CompletedProcess[str], namespace: str, case: str
) -> None:
    jobs = Jobs(api, namespace)
    change, words = BROKEN[case]

    def refused() -> ApiException | None:
        # The API server loads a new policy within a second or so of its creation.
        error = _create(jobs, factory_job("refused", namespace, **change))
        if error is None:
            jobs.custom.delete_namespaced_custom_object("flextrain.dev", "v1alpha1", namespace, "flextrainjobs", "refused")
        return error

    error = wait_for(refused, timeout=30, what="the ValidatingAdmissionPolicy to refuse the job")
    assert error.status == 403, error.body  # reason Forbidden
    assert "ValidatingAdmissionPolicy" in error.body and "FlexTrain policy" in error.body, error.body
    for word in words:
        assert word in error.body, error.body
    # Within the policy: created.
    assert _create(jobs, factory_job("allowed", namespace, image="ghcr.io/flextrain/flextrain:9.9-cpu")) is None


def test_the_operator_refuses_it_where_no_admission_policy_is_installed(
    api: client.ApiClient, operator: install.OperatorProcess, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    with without_admission_policy(api):
        wait_for(
            lambda: _create(jobs, factory_job("tenant", namespace, **BROKEN["image"][0], **BROKEN["service account"][0]))
            is None,
            timeout=30,
            what="the API server to take the job without the admission policy",
        )

    def refused() -> dict[str, Any] | None:
        cond = jobs.condition("tenant", "Progressing")
        return cond if cond and cond["reason"] == "PolicyViolation" else None

    cond = wait_for(refused, timeout=30, what="the operator's PolicyViolation condition")
    assert "spec.image" in cond["message"] and "serviceAccountName" in cond["message"]
    assert jobs.get("tenant")["status"]["phase"] == "Pending"
    warnings = [e for e in jobs.events("tenant") if e.reason == "PolicyViolation"]
    assert warnings and warnings[0].type == "Warning"
    assert jobs.children("tenant") == {"Secret": [], "Service": [], "Deployment": [], "Job": []}
    # Brought within the policy (the admission policy is back and lets the edit pass), it runs.
    jobs.patch("tenant", {"spec": {"image": None, "podTemplate": None}})
    wait_for(lambda: jobs.all_children_created("tenant", 3), timeout=30, what="the children once the job complies")
