"""The tenancy policy on the real API server: the chart's ValidatingAdmissionPolicy
refuses a job that asks for a foreign image, a ServiceAccount, a hostPath or an
aggregator toleration at create
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
    "aggregator toleration": (
        {"aggregator": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}},
        ("spec.aggregator.tolerations", "node-role.kubernetes.io/control-plane", "may not give the aggregator"),
    ),
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


def _selects(core: client.CoreV1Api, namespace: str, selector: dict[str, str]) -> set[str]:
    query = ",".join(f"{k}={v}" for k, v in selector.items())
    return {p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector=query).items}


def test_each_job_gets_a_network_policy_that_selects_its_own_pods(
    api: client.ApiClient, operator: install.OperatorProcess, namespace: str
) -> None:
    """The test control plane enforces no NetworkPolicy (no network plugin): this checks
    the object the API server stored and that its selectors pick the right real pods."""
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("fenced", namespace))
    jobs.create(factory_job("neighbour", namespace))
    networking = client.NetworkingV1Api(api)

    def policy() -> client.V1NetworkPolicy | None:
        try:
            return networking.read_namespaced_network_policy("fenced-aggregator", namespace)
        except ApiException:
            return None

    try:
        fenced = wait_for(policy, timeout=60, what="the job's NetworkPolicy")
    except AssertionError:
        raise AssertionError(operator.tail(80)) from None
    assert fenced.metadata.owner_references[0].name == "fenced"
    core = client.CoreV1Api(api)
    wait_for(lambda: len(jobs.trainer_pods("fenced")) == 5 and len(jobs.trainer_pods("neighbour")) == 5, timeout=60, what="the trainer pods")
    aggregators = wait_for(
        lambda: _selects(core, namespace, fenced.spec.pod_selector.match_labels) or None, timeout=60, what="the aggregator pod"
    )
    assert all(name.startswith("fenced-aggregator-") for name in aggregators) and len(aggregators) == 1
    assert fenced.spec.policy_types == ["Ingress"]
    [grpc_rule] = fenced.spec.ingress  # metrics: no namespace named, so no rule
    assert [(p.protocol, p.port) for p in grpc_rule.ports] == [("TCP", 50051)]
    trainers, operator_peer = grpc_rule._from
    assert _selects(core, namespace, trainers.pod_selector.match_labels) == {p.metadata.name for p in jobs.trainer_pods("fenced")}
    assert operator_peer.namespace_selector.match_labels == {"kubernetes.io/metadata.name": install.NAMESPACE}
    chart_pod = next(
        d for d in client.AppsV1Api(api).list_namespaced_deployment(install.NAMESPACE).items
        if d.metadata.labels.get("app.kubernetes.io/instance") == install.RELEASE
    ).spec.template.metadata.labels
    assert operator_peer.pod_selector.match_labels.items() <= chart_pod.items()
    # The namespace label the selector relies on is set by the API server itself.
    assert client.CoreV1Api(api).read_namespace(install.NAMESPACE).metadata.labels["kubernetes.io/metadata.name"] == install.NAMESPACE
