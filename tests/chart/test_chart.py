"""The chart lints, renders objects that validate offline for the default values and every
value file under charts/flextrain/ci/, runs the operator the way `flextrain operator`
reads its flags and settings, and puts DeviceTiers and a ServiceMonitor that fit what
the operator creates."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from flextrain import __version__
from flextrain.api.devicetier import DeviceTier
from flextrain.api.schema_check import crd_violations
from flextrain.cli import build_parser
from flextrain.operator import names
from flextrain.operator.config import PREFIX, OperatorSettings
from tests.chart.chart import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    REPO,
    Tools,
    documents,
    env_of,
    merged_values,
    of_kind,
    one,
    operator_container,
    run,
    value_args,
)

pytestmark = pytest.mark.timeout(120)

Render = Callable[..., str]
VALUE_SETS = [
    pytest.param((), id="defaults"),
    *(pytest.param((path,), id=path.stem) for path in CI_VALUES),
]
KUBERNETES_VALIDATE = Path(sys.executable).with_name("kubernetes-validate")
#: Kinds kubernetes-validate has no schema for: ours (checked against the CRD below) and
#: the Prometheus Operator's.
CUSTOM_KINDS = {("DeviceTier", "flextrain.dev/v1alpha1"), ("ServiceMonitor", "monitoring.coreos.com/v1")}
CI = {path.stem: path for path in CI_VALUES}


def chart_meta() -> dict[str, Any]:
    meta: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return meta


def test_ci_value_files_cover_cluster_wide_namespaced_and_default_tiers() -> None:
    assert {"cluster-wide-values", "namespaced-values", "tiers-values"} <= set(CI)
    assert yaml.safe_load(CI["cluster-wide-values"].read_text())["watch"]["clusterWide"] is True
    assert yaml.safe_load(CI["namespaced-values"].read_text())["watch"]["clusterWide"] is False
    assert yaml.safe_load(CI["tiers-values"].read_text())["deviceTiers"]["enabled"] is True


def test_app_version_is_the_package_version() -> None:
    """The image tags default to appVersion, so it must name the release being built."""
    assert chart_meta()["appVersion"] == __version__


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict_passes(tools: Tools, values: tuple[Path, ...]) -> None:
    proc = run([tools.helm, "lint", "--strict", CHART, *value_args(values)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rendered_objects_pass_kubernetes_validate_strict(render: Render, values: tuple[Path, ...]) -> None:
    text = render(*values)
    proc = run([KUBERNETES_VALIDATE, "--strict", "-"], stdin=text)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    unknown = set(re.findall(r"Couldn't find schema for kind (\S+) with api version (\S+)", output))
    assert unknown <= CUSTOM_KINDS, output
    builtin = [d for d in documents(text) if (d["kind"], d["apiVersion"]) not in CUSTOM_KINDS]
    assert output.count(" passed for resource ") == len(builtin), output


@pytest.mark.parametrize("values", VALUE_SETS)
def test_operator_runs_non_root_read_only_with_a_liveness_probe(
    render: Render, values: tuple[Path, ...]
) -> None:
    deployment = one(documents(render(*values)), "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # the images' user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    # a writable /tmp on the read-only root filesystem
    [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    [volume] = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    [port] = [p for p in container["ports"] if p["name"] == probe["port"]]
    # the probe hits the port `--liveness` makes kopf listen on
    [liveness] = [a for a in container["args"] if a.startswith("--liveness=")]
    assert liveness == f"--liveness=http://0.0.0.0:{port['containerPort']}/healthz"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_operator_args_and_env_are_what_flextrain_operator_reads(
    render: Render, values: tuple[Path, ...]
) -> None:
    docs = documents(render(*values))
    container = operator_container(docs)
    assert "command" not in container, "the image's ENTRYPOINT is `flextrain`"
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator"
    env = env_of(container)
    known = {PREFIX + f.name.upper() for f in dataclasses.fields(OperatorSettings)}
    unknown = {k for k in env if k.startswith(PREFIX)} - known
    assert not unknown, f"the operator reads no such settings: {unknown}"
    settings = OperatorSettings.from_env(env)  # raises SettingsError on a bad value
    values_doc = merged_values(*values)
    cluster_wide = values_doc["watch"]["clusterWide"]
    assert args.all_namespaces is cluster_wide
    if not cluster_wide:
        assert args.namespace == (values_doc["watch"]["namespaces"] or [NAMESPACE])
    image = values_doc["trainerImage"]
    assert settings.image == (
        f"{image['registry']}/{image['repository']}:{image['tag'] or __version__}-{image['variant']}"
    )
    assert settings.image_pull_policy == image["pullPolicy"]
    metrics = values_doc["metrics"]
    assert settings.metrics_port == (metrics["port"] if metrics["enabled"] else 0)
    election = values_doc["operator"]["leaderElection"]
    assert settings.leader_election is election["enabled"]
    assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (
        election["leaseDuration"], election["renewDeadline"], election["retryPeriod"])
    assert settings.self_namespace == NAMESPACE  # the Lease's namespace
    [pod_name] = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # the holder identity


def test_default_values_create_no_device_tiers_and_no_service_monitor(render: Render) -> None:
    docs = documents(render())
    assert not of_kind(docs, "DeviceTier")
    assert not of_kind(docs, "ServiceMonitor")


def test_device_tiers_from_values_satisfy_the_crd_schema_and_cel_rules(render: Render) -> None:
    tiers = of_kind(documents(render(CI["tiers-values"])), "DeviceTier")
    assert sorted(t["metadata"]["name"] for t in tiers) == ["arm-edge", "cpu-x86", "gpu-a100"]
    for tier in tiers:
        assert crd_violations(tier, "DeviceTier") == [], tier["metadata"]["name"]
        DeviceTier.model_validate(tier)
        # created after the CRD: Helm maps every template's kind before creating any
        assert tier["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"


def test_gpu_tiers_get_the_cuda_image_and_cpu_tiers_the_multi_arch_default(render: Render) -> None:
    tiers = {t["metadata"]["name"]: t["spec"] for t in
             of_kind(documents(render(CI["tiers-values"])), "DeviceTier")}
    cuda = f"ghcr.io/flextrain/flextrain:{__version__}-cuda"
    assert tiers["gpu-a100"]["image"] == cuda
    assert "image" not in tiers["cpu-x86"] and "image" not in tiers["arm-edge"]
    assert tiers["arm-edge"]["architecture"] == "arm64"


def test_the_default_tiers_are_the_example_tiers(tools: Tools, tmp_path: Path) -> None:
    """deviceTiers.enabled with the default tiers installs examples/devicetiers.yaml (plus
    the CUDA image on the GPU tier), so the guide and the chart describe the same pools."""
    proc = run([tools.helm, "template", "ft", CHART,
                *value_args([{"deviceTiers": {"enabled": True}}], tmp_path)])
    assert proc.returncode == 0, proc.stderr
    rendered = {t["metadata"]["name"]: t["spec"] for t in of_kind(documents(proc.stdout), "DeviceTier")}
    examples = {t["metadata"]["name"]: t["spec"] for t in
                yaml.safe_load_all((REPO / "examples" / "devicetiers.yaml").read_text()) if t}
    examples["gpu"]["image"] = f"ghcr.io/flextrain/flextrain:{__version__}-cuda"
    assert rendered == examples


@pytest.mark.parametrize(("values", "namespaces"), [
    pytest.param("cluster-wide-values", None, id="cluster-wide"),
    pytest.param("tiers-values", [NAMESPACE], id="namespaced"),
])
def test_service_monitor_scrapes_the_aggregator_services_the_operator_creates(
    render: Render, values: str, namespaces: list[str] | None
) -> None:
    docs = documents(render(CI[values]))
    monitors = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"aggregators", "operator"}
    monitor = monitors["aggregators"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    service_labels = names.aggregator_labels("some-job")
    assert selector.items() <= service_labels.items()
    assert not selector.items() <= names.trainer_labels("some-job", "tier").items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == names.METRICS_PORT_NAME
    if namespaces is None:
        assert monitor["spec"]["namespaceSelector"] == {"any": True}
    else:
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": namespaces}
    # The operator's own: its metrics Service, which selects the operator pod.
    operator = monitors["operator"]["spec"]["selector"]["matchLabels"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
    assert operator.items() <= service["metadata"]["labels"].items()
    pod = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod.items()
