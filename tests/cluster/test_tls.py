"""TLS on the real control plane: a job's Secret holds its CA and the aggregator's serving
certificate for the Service's names; the real Job controller's trainer pods mount the CA
alone, the aggregator the certificate and its key; a job that opts out gets no TLS at
all; the mode cannot be changed once the job exists; and the chart's admission policy
with `policy.allowPlaintext=false` refuses the opt-out at create time."""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import yaml
from cryptography import x509
from kubernetes import client
from kubernetes.client.rest import ApiException

from flextrain.operator import certs
from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.node_agent import NodeAgent
from tests.cluster.test_operator import Jobs, factory_job
from tests.tools import REPO, ensure_tools

PLAINTEXT = {"aggregator": {"tls": {"mode": "Disabled"}}}


def _env(container: client.V1Container) -> dict[str, Any]:
    return {e.name: e.value if e.value is not None else e.value_from for e in container.env or []}


def _tls_volume(pod_spec: client.V1PodSpec) -> client.V1Volume | None:
    found = [v for v in pod_spec.volumes or [] if v.name == "tls"]
    return found[0] if found else None


def test_the_job_secret_and_every_pod_mount_only_what_they_need(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("secure", namespace))
    wait_for(lambda: jobs.all_children_created("secure", 3), timeout=60, what="the job's children")

    secret = jobs.core.read_namespaced_secret("secure-token", namespace)
    data = {k: base64.b64decode(v).decode() for k, v in secret.data.items()}
    assert {"token", "ca.crt", "tls.crt", "tls.key", "ca.key"} <= set(data)
    cert = x509.load_pem_x509_certificate(data["tls.crt"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(data["ca.crt"].encode()))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    service = "secure-aggregator"
    assert names.get_values_for_type(x509.DNSName) == certs.service_dns_names(service, namespace, "cluster.local")
    assert secret.metadata.owner_references[0].kind == "FlexTrainJob"

    deployment = jobs.apps.read_namespaced_deployment(service, namespace)
    template = deployment.spec.template.spec
    volume = _tls_volume(template)
    assert volume is not None and volume.secret.secret_name == "secure-token"
    assert [(i.key, i.path) for i in volume.secret.items] == [("tls.crt", "tls.crt"), ("tls.key", "tls.key")]
    [aggregator] = template.containers
    env = _env(aggregator)
    assert env["FLEXTRAIN_TLS_CERT"].endswith("/tls.crt") and env["FLEXTRAIN_TLS_KEY"].endswith("/tls.key")
    health = int(env["FLEXTRAIN_HEALTH_PORT"])
    assert aggregator.readiness_probe.grpc.port == health != int(env["FLEXTRAIN_PORT"])

    # The real Job controller's pods: the CA alone, and the Service name to verify.
    def every_trainer_pod() -> list[client.V1Pod] | None:
        pods = jobs.trainer_pods("secure")
        return pods if len(pods) == 5 else None

    for pod in wait_for(every_trainer_pod, timeout=60, what="5 trainer pods"):
        volume = _tls_volume(pod.spec)
        assert volume is not None and volume.secret.secret_name == "secure-token"
        assert [i.key for i in volume.secret.items] == ["ca.crt"], pod.metadata.name
        [trainer] = pod.spec.containers
        env = _env(trainer)
        assert env["FLEXTRAIN_TLS_CA"].endswith("/ca.crt")
        assert env["FLEXTRAIN_TLS_SERVER_NAME"] == f"{service}.{namespace}.svc"
        assert "FLEXTRAIN_TLS_KEY" not in env and "FLEXTRAIN_TOKEN" not in env


def test_a_job_that_opts_out_gets_no_tls_and_the_mode_is_immutable(
    api: client.ApiClient, operator: install.OperatorProcess, agent: NodeAgent, namespace: str
) -> None:
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("plain", namespace, **PLAINTEXT))
    jobs.create(factory_job("secure", namespace))
    wait_for(lambda: jobs.all_children_created("plain", 3), timeout=60, what="the plaintext job's children")

    secret = jobs.core.read_namespaced_secret("plain-token", namespace)
    assert not {"ca.crt", "tls.crt", "tls.key", "ca.key"} & set(secret.data)
    deployment = jobs.apps.read_namespaced_deployment("plain-aggregator", namespace)
    tier_jobs = jobs.batch.list_namespaced_job(namespace, label_selector="flextrain.dev/job=plain").items
    for spec in [deployment.spec.template.spec, *(j.spec.template.spec for j in tier_jobs)]:
        assert _tls_volume(spec) is None
        [container] = spec.containers
        assert not [k for k in _env(container) if k.startswith("FLEXTRAIN_TLS") or k == "FLEXTRAIN_HEALTH_PORT"]
    assert deployment.metadata.annotations["flextrain.dev/tls"] == "Disabled"

    # Either way round, the API server refuses to change the mode of an existing job.
    for name, change in (
        ("plain", {"spec": {"aggregator": {"tls": {"mode": "Enabled"}}}}),
        ("plain", {"spec": {"aggregator": {"tls": None}}}),
        ("secure", PLAINTEXT_PATCH),
    ):
        try:
            jobs.patch(name, change)
        except ApiException as exc:
            assert exc.status == 422 and "aggregator.tls.mode is immutable" in exc.body, exc.body
        else:
            raise AssertionError(f"changing the TLS mode of {name} was accepted: {change}")
    # Other edits of the aggregator section stay allowed.
    jobs.patch("secure", {"spec": {"aggregator": {"nodeSelector": {"flextrain.dev/pool": "cpu"}}}})
    # An explicit null aggregator reads as unset (TLS) on create and on later updates.
    jobs.create(factory_job("nulled", namespace, aggregator=None))
    jobs.patch("nulled", {"spec": {"suspend": True}})
    try:
        jobs.patch("nulled", PLAINTEXT_PATCH)
    except ApiException as exc:
        assert exc.status == 422 and "aggregator.tls.mode is immutable" in exc.body, exc.body
    else:
        raise AssertionError("a null aggregator section was turned into a plaintext one")


PLAINTEXT_PATCH = {"spec": PLAINTEXT}


def test_the_admission_policy_refuses_plaintext_where_the_chart_forbids_it(
    api: client.ApiClient,
    installed_chart: subprocess.CompletedProcess[str],
    namespace: str,
) -> None:
    """The chart's ValidatingAdmissionPolicy rendered with policy.allowPlaintext=false,
    installed under its own name and bound to this test's namespace only."""
    rendered = subprocess.run(
        [str(ensure_tools() / "helm"), "template", "strict", str(REPO / "charts" / "flextrain"),
         "--show-only", "templates/policy.yaml", "--set", "policy.allowPlaintext=false"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    policy, binding = (d for d in yaml.safe_load_all(rendered) if d)
    name = f"strict-{namespace}"[:63]
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    }
    admission = client.AdmissionregistrationV1Api(api)
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    jobs = Jobs(api, namespace)
    try:

        def refused() -> ApiException | None:
            try:
                jobs.create(factory_job("plain", namespace, **PLAINTEXT))
            except ApiException as exc:
                return exc
            jobs.custom.delete_namespaced_custom_object("flextrain.dev", "v1alpha1", namespace, "flextrainjobs", "plain")
            return None

        error = wait_for(refused, timeout=30, what="the ValidatingAdmissionPolicy to refuse plaintext")
        assert error.status == 403, error.body
        assert "spec.aggregator.tls.mode Disabled is not allowed by the FlexTrain policy" in error.body, error.body
        jobs.create(factory_job("secure", namespace))  # TLS (the default) passes
        jobs.create(factory_job("explicit", namespace, aggregator={"tls": {"mode": "Enabled"}}))
    finally:
        admission.delete_validating_admission_policy_binding(name)
        admission.delete_validating_admission_policy(name)
