"""cert-manager issuing the aggregators' certificates (chart `tls.issuer`), on the real
control plane. cert-manager itself cannot run here (no container images): its
Certificate CRD is installed from a minimal schema of our own (cert_manager_crd.yaml),
a release of the chart with `tls.issuer` set runs the operator with that release's RBAC,
and the test writes the Secret cert-manager would write. Checked: the operator creates
the Certificate cert-manager needs (issuer, Service names, ECDSA P-256, lifetime), once,
also across a restart; the job's own Secret then holds no chain; the aggregator and the
real Job controller's trainer pods mount the cert-manager Secret (tls.crt/tls.key, and
ca.crt alone); the RBAC rule for certificates suffices."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from flextrain.operator import certs
from tests.cluster import install
from tests.cluster.conftest import FAST_OPERATOR_ENV, wait_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.node_agent import NodeAgent
from tests.cluster.test_namespaced import _namespaces
from tests.cluster.test_operator import Jobs, factory_job
from tests.cluster.test_operator_metrics import _scrape, _value

RELEASE = "ftcm"
SYSTEM = "ftcm-system"
CRD = Path(__file__).with_name("cert_manager_crd.yaml")


def _certificate(api: client.ApiClient, namespace: str, name: str) -> dict | None:
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(
            "cert-manager.io", "v1", namespace, "certificates", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


@pytest.mark.timeout(300)
def test_with_an_issuer_the_operator_creates_the_certificate_and_pods_mount_its_secret(
    control_plane: ControlPlane,
    api: client.ApiClient,
    agent: NodeAgent,
    operator: install.OperatorProcess,
    helm_binary: Path,
    tmp_path: Path,
) -> None:
    extensions = client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(yaml.safe_load(CRD.read_text()))
    served = f"certs-{uuid.uuid4().hex[:5]}"
    operator.stop()  # the cluster-wide operator would serve the namespace too
    proc: install.OperatorProcess | None = None
    try:
        with _namespaces(api, served):
            done = install.helm(
                helm_binary, control_plane, "install", RELEASE, str(install.CHART),
                "--namespace", SYSTEM, "--create-namespace",
                "--set", "crds.enabled=false", "--set", "watch.clusterWide=false",
                "--set", f"watch.namespaces[0]={served}",
                "--set", "tls.issuer.kind=ClusterIssuer", "--set", "tls.issuer.name=flextrain-ca",
                "--wait", "--timeout", "120s",
            )
            assert done.returncode == 0, done.stderr
            kubeconfig = install.token_kubeconfig(api, control_plane, f"{RELEASE}-flextrain", SYSTEM, tmp_path / "kubeconfig")
            metrics_port = install.free_port()
            env = {
                **install.chart_operator_env(api, RELEASE, SYSTEM),
                **FAST_OPERATOR_ENV,
                "FLEXTRAIN_OPERATOR_SELF_METRICS_PORT": str(metrics_port),
            }
            assert env["FLEXTRAIN_OPERATOR_TLS_ISSUER_NAME"] == "flextrain-ca"
            proc = install.OperatorProcess(kubeconfig, env, tmp_path / "operator.log", scope=("-n", served)).start()
            proc.wait_live()

            jobs = Jobs(api, served)
            jobs.create(factory_job("secure", served))
            cert = wait_for(lambda: _certificate(api, served, "secure-tls"), timeout=60, what="the Certificate")
            wait_for(lambda: jobs.all_children_created("secure", 3), timeout=60, what="the job's children")
            spec = cert["spec"]
            assert spec["issuerRef"] == {"name": "flextrain-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
            assert spec["secretName"] == "secure-tls"
            names = certs.service_dns_names("secure-aggregator", served, "cluster.local")
            assert spec["dnsNames"] == names
            assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
            assert (spec["duration"], spec["renewBefore"]) == ("8760h", "2891h")
            assert spec["usages"] == ["server auth", "digital signature"]
            assert cert["metadata"]["ownerReferences"][0]["kind"] == "FlexTrainJob"

            # The job's own Secret holds no chain: the pods read cert-manager's.
            token = jobs.core.read_namespaced_secret("secure-token", served)
            assert not {"ca.crt", "tls.crt", "tls.key", "ca.key"} & set(token.data)
            # What cert-manager would write for this Certificate.
            chain = certs.issue("flextrain-ca", spec["dnsNames"], now=dt.datetime.now(dt.UTC))
            jobs.core.create_namespaced_secret(served, {
                "metadata": {"name": "secure-tls"},
                "type": "kubernetes.io/tls",
                "data": {
                    k: base64.b64encode(v.encode()).decode()
                    for k, v in {"ca.crt": chain.ca_cert, "tls.crt": chain.cert, "tls.key": chain.key}.items()
                },
            })
            deployment = jobs.apps.read_namespaced_deployment("secure-aggregator", served)
            [volume] = [v for v in deployment.spec.template.spec.volumes if v.name == "tls"]
            assert volume.secret.secret_name == "secure-tls"
            assert [i.key for i in volume.secret.items] == ["tls.crt", "tls.key"]
            pods = wait_for(lambda: (p := jobs.trainer_pods("secure")) and len(p) == 5 and p, timeout=60, what="trainer pods")
            for pod in pods:
                [volume] = [v for v in pod.spec.volumes if v.name == "tls"]
                assert volume.secret.secret_name == "secure-tls"
                assert [i.key for i in volume.secret.items] == ["ca.crt"]

            # A restart finds the Certificate it made (409, then read): still one, the same.
            proc.stop()
            proc.start()
            proc.wait_live()
            conflict = 'flextrain_operator_api_requests_total{code="409",verb="POST"}'
            wait_for(lambda: _value(_scrape(metrics_port), conflict) >= 1, timeout=30, what="the create that finds it")
            jobs.create(factory_job("second", served))
            wait_for(lambda: _certificate(api, served, "second-tls"), timeout=60, what="the second job's Certificate")
            after = _certificate(api, served, "secure-tls")
            assert after is not None and after["metadata"]["uid"] == cert["metadata"]["uid"]
            denials = proc.forbidden()
            assert not denials, "RBAC denials with the chart's cert-manager rules:\n" + "\n".join(denials[:10])
    finally:
        if proc is not None:
            proc.stop()
        install.helm(helm_binary, control_plane, "uninstall", RELEASE, "--namespace", SYSTEM, "--wait")
        extensions.delete_custom_resource_definition("certificates.cert-manager.io")
        operator.start()
        operator.wait_live()
