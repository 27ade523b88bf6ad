"""Builders: jobs in, Kubernetes objects out; every object passes kubernetes-validate
--strict (the offline schemas of Kubernetes 1.37)."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from typing import Any

import kubernetes_validate
import pytest

from flextrain.contract.credentials import tier_key
from flextrain.jobplan import JobPlan, plan_job
from flextrain.operator import builders, certs, names
from flextrain.operator.config import OperatorSettings
from tests.unit.operator.conftest import UID, job, tier

SETTINGS = OperatorSettings(image="registry.example/flextrain:1")
OWNER = names.owner_reference("FlexTrainJob", "job", UID)
K8S = "1.37"

GPU = tier(
    "gpu",
    nodeSelector={"nvidia.com/gpu.present": "true"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    accelerator={"type": "nvidia.com/gpu", "count": 2},
    resources={
        "requests": {"cpu": "4", "memory": "16Gi"},
        "limits": {"cpu": "8500m", "memory": "32Gi"},
    },
    image="registry.example/flextrain:cuda",
)
CPU = tier("cpu")
ARM = tier("arm", architecture="arm64", resources={"requests": {"cpu": "500m", "memory": "1Gi"}})


def _children(
    spec: dict[str, Any],
    settings: OperatorSettings = SETTINGS,
    device_tiers: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    j = job(**spec)
    tiers = device_tiers or {"cpu": CPU, "gpu": GPU, "arm": ARM}
    plan = plan_job(j, tiers)
    out = [
        builders.build_secret(j, "s3cret", OWNER),
        builders.build_aggregator_service(j, OWNER, settings),
        builders.build_aggregator_deployment(plan, OWNER, settings),
    ]
    out += [
        builders.build_tier_job(plan, t, tiers[t.device_tier], OWNER, settings) for t in plan.tiers
    ]
    return out


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    [container] = obj["spec"]["template"]["spec"]["containers"]
    return container


def _env(obj: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(obj)["env"]}


VARIANTS: dict[str, tuple[dict[str, Any], OperatorSettings]] = {
    "defaults": ({}, SETTINGS),
    "checkpoint claim with subPath": (
        {"checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt", "subPath": "runs/a"}}},
        SETTINGS,
    ),
    "checkpoint path": ({"checkpoint": {"path": "/work/ckpt"}}, SETTINGS),
    "dataset on a claim": (
        {
            "dataset": {
                "name": "fashion-mnist",
                "source": {"persistentVolumeClaim": {"claimName": "data", "subPath": "fm"}},
            }
        },
        SETTINGS,
    ),
    "dataset on the nodes": (
        {"dataset": {"name": "cifar10", "source": {"hostPath": {"path": "/srv/cifar"}}}},
        SETTINGS,
    ),
    "dataset in the image": (
        {"dataset": {"name": "cifar10", "source": {"path": "/opt/data"}}},
        SETTINGS,
    ),
    "per-tier source": (
        {
            "dataset": {
                "name": "cifar10",
                "source": {"persistentVolumeClaim": {"claimName": "data"}},
            },
            "tiers": [
                {
                    "name": "edge",
                    "deviceTierRef": "arm",
                    "replicas": 3,
                    "depth": 2,
                    "dataSource": {"hostPath": {"path": "/data/cifar"}},
                },
                {"name": "gpus", "deviceTierRef": "gpu", "replicas": 2, "depth": 9},
            ],
        },
        SETTINGS,
    ),
    "dirichlet": (
        {"dataset": {"name": "digits", "partition": {"scheme": "dirichlet", "alpha": 0.5}}},
        SETTINGS,
    ),
    "pod template": (
        {
            "podTemplate": {
                "labels": {"team": "a"},
                "annotations": {"x": "y"},
                "env": [
                    {"name": "FLEXTRAIN_DEVICE", "value": "cpu"},
                    {"name": "EXTRA", "value": "1"},
                ],
                "serviceAccountName": "trainers",
                "priorityClassName": "batch-low",
                "imagePullSecrets": [{"name": "reg"}],
            }
        },
        SETTINGS,
    ),
    "unrestricted pods, no metrics": (
        {},
        dataclasses.replace(SETTINGS, restricted_pods=False, metrics_port=0),
    ),
    "suspended with a claim": (
        {"suspend": True, "checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}}},
        SETTINGS,
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_child_passes_kubernetes_validate_strict(variant: str) -> None:
    spec, settings = VARIANTS[variant]
    for obj in _children(spec, settings):
        kubernetes_validate.validate(obj, K8S, strict=True)
        assert obj["metadata"]["ownerReferences"] == [OWNER]
        assert obj["metadata"]["labels"][names.JOB_LABEL] == "job"


@pytest.mark.parametrize(
    ("spec", "aggregator_data", "trainer_data", "volume"),
    [
        ({}, None, None, None),
        (
            {"dataset": {"name": "cifar10", "source": {"path": "/opt/data"}}},
            "/opt/data",
            "/opt/data",
            None,
        ),
        (
            {
                "dataset": {
                    "name": "cifar10",
                    "source": {"persistentVolumeClaim": {"claimName": "data"}},
                }
            },
            SETTINGS.data_mount_path,
            SETTINGS.data_mount_path,
            {"claimName": "data", "readOnly": True},
        ),
        (
            {"dataset": {"name": "cifar10", "source": {"hostPath": {"path": "/srv/c"}}}},
            SETTINGS.data_mount_path,
            SETTINGS.data_mount_path,
            {"path": "/srv/c", "type": "Directory"},
        ),
    ],
    ids=["built-in", "image path", "claim", "host path"],
)
def test_the_dataset_is_mounted_read_only_from_its_source(
    spec: dict[str, Any],
    aggregator_data: str | None,
    trainer_data: str | None,
    volume: dict[str, Any] | None,
) -> None:
    _, _, deployment, strong, _ = _children(spec)
    assert _env(deployment).get("FLEXTRAIN_DATA_DIR") == aggregator_data
    assert _env(strong).get("FLEXTRAIN_DATA_DIR") == trainer_data
    data_volumes = [
        v for v in strong["spec"]["template"]["spec"].get("volumes", []) if v["name"] == "data"
    ]
    if volume is None:
        assert data_volumes == []
    else:
        [v] = data_volumes
        assert volume in (v.get("persistentVolumeClaim"), v.get("hostPath"))
        [mount] = [m for m in _container(strong)["volumeMounts"] if m["name"] == "data"]
        assert mount["readOnly"] is True


def test_a_tier_overrides_the_job_data_source() -> None:
    spec, _ = VARIANTS["per-tier source"]
    *_, edge, gpus = _children(spec)
    [edge_data] = [v for v in edge["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    [gpu_data] = [v for v in gpus["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert edge_data["hostPath"]["path"] == "/data/cifar"
    assert gpu_data["persistentVolumeClaim"]["claimName"] == "data"


def test_tier_job_takes_placement_resources_and_image_from_the_device_tier() -> None:
    spec, _ = VARIANTS["per-tier source"]
    *_, edge, gpus = _children(spec)
    pod = gpus["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "kubernetes.io/arch": "amd64"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert _container(gpus)["image"] == "registry.example/flextrain:cuda"
    assert _container(gpus)["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
        "limits": {"cpu": "8500m", "memory": "32Gi", "nvidia.com/gpu": "2"},
    }
    env = _env(gpus)
    assert (env["FLEXTRAIN_DEVICE"], env["FLEXTRAIN_THREADS"]) == ("cuda", "8")
    assert edge["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"] == "arm64"
    assert _container(edge)["image"] == SETTINGS.image
    assert (_env(edge)["FLEXTRAIN_DEVICE"], _env(edge)["FLEXTRAIN_THREADS"]) == ("cpu", "1")
    assert gpus["spec"]["completions"] == gpus["spec"]["parallelism"] == 2
    assert edge["spec"]["completions"] == 3


def test_trainer_env_contract() -> None:
    _, _, _, strong, weak = _children(VARIANTS["dirichlet"][0])
    env = _env(weak)
    assert env == {
        "FLEXTRAIN_AGGREGATOR": "job-aggregator.default.svc:50051",
        "FLEXTRAIN_TIER_KEY": {"secretKeyRef": {"name": "job-token", "key": "tier-weak"}},
        "FLEXTRAIN_JOB": "job",
        "FLEXTRAIN_TIER": "weak",
        "FLEXTRAIN_DEPTH": "3",
        "FLEXTRAIN_PARTITION": "dirichlet:0.5",
        "FLEXTRAIN_DEVICE": "cpu",
        "FLEXTRAIN_LOG_FORMAT": "json",
        "HOME": "/tmp",
        "FLEXTRAIN_THREADS": "1",
    }
    assert _container(strong)["command"] == ["flextrain", "trainer"]


def test_pod_failure_policy_fails_the_index_on_exit_2_and_ignores_disruptions() -> None:
    *_, strong, _ = _children({})
    spec = strong["spec"]
    assert spec["completionMode"] == "Indexed" and spec["backoffLimitPerIndex"] == 3
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailIndex",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [2]},
    }
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_aggregator_deployment_is_one_recreated_replica_probed_over_grpc() -> None:
    _, service, deployment, *_ = _children(
        {"checkpoint": {"persistentVolumeClaim": {"claimName": "ckpt"}}}
    )
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    container = _container(deployment)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}
    env = _env(deployment)
    plan = JobPlan.from_json(env["FLEXTRAIN_PLAN"])
    assert plan.depths == {"strong": 9, "weak": 3}
    assert plan.job.metadata.model_extra == {}  # no uid or other server fields in the plan
    assert env["FLEXTRAIN_TOKEN"] == {"secretKeyRef": {"name": "job-token", "key": "token"}}
    assert (env["FLEXTRAIN_PORT"], env["FLEXTRAIN_METRICS_PORT"]) == ("50051", "9090")
    assert env["FLEXTRAIN_CHECKPOINT_DIR"] == SETTINGS.checkpoint_mount_path
    [ckpt] = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "checkpoints"]
    assert ckpt == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}
    assert json.loads(deployment["metadata"]["annotations"][names.DEPTHS_ANNOTATION]) == plan.depths
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [50051, 9090]
    assert set(spec["selector"]["matchLabels"].items()) <= set(
        spec["template"]["metadata"]["labels"].items()
    )


CLAIM = {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "job-checkpoints"}}
EMPTY = {"name": "checkpoints", "emptyDir": {}}


@pytest.mark.parametrize(
    ("checkpoint", "volume"),
    [
        (None, CLAIM),  # the default: the operator's claim
        ({"path": "/work/ckpt"}, CLAIM),
        ({"size": "20Gi"}, CLAIM),
        ({"emptyDir": True}, EMPTY),  # only when the job asks for it
        ({"emptyDir": True, "path": "/work/ckpt"}, EMPTY),
        ({"persistentVolumeClaim": {"claimName": "mine"}}, {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "mine"}}),
    ],
)
def test_checkpoints_live_on_a_claim_unless_the_job_asks_for_an_empty_dir(
    checkpoint: dict[str, Any] | None, volume: dict[str, Any]
) -> None:
    spec = {"checkpoint": checkpoint} if checkpoint else {}
    _, _, deployment, *_ = _children(spec)
    assert volume in deployment["spec"]["template"]["spec"]["volumes"]
    expected = (checkpoint or {}).get("path") or SETTINGS.checkpoint_mount_path
    assert _env(deployment)["FLEXTRAIN_CHECKPOINT_DIR"] == expected


def test_the_operators_checkpoint_claim() -> None:
    j = job(checkpoint={"size": "20Gi"})
    claim = builders.build_checkpoint_claim(j, OWNER, dataclasses.replace(SETTINGS, checkpoint_storage_class="fast"))
    kubernetes_validate.validate(claim, K8S, strict=True)
    assert claim["metadata"]["name"] == "job-checkpoints" and claim["metadata"]["ownerReferences"] == [OWNER]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }
    default = builders.build_checkpoint_claim(job(), OWNER, SETTINGS)
    assert default["spec"]["resources"]["requests"]["storage"] == "1Gi" and "storageClassName" not in default["spec"]
    assert builders.operator_claim(job()) and not builders.operator_claim(job(checkpoint={"emptyDir": True}))


def test_secret_holds_the_token_and_each_tiers_key() -> None:
    secret, *_ = _children({})
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    tiers = [t.name for t in job().spec.tiers]
    assert tiers == ["strong", "weak"]
    assert data == {"token": "s3cret", **{f"tier-{t}": tier_key("s3cret", "job", t) for t in tiers}}
    assert secret["type"] == "Opaque"


def test_each_tier_reads_only_its_own_key() -> None:
    _, _, deployment, strong, weak = _children(VARIANTS["dirichlet"][0])
    for obj, key in ((strong, "tier-strong"), (weak, "tier-weak"), (deployment, "token")):
        refs = [e["valueFrom"]["secretKeyRef"]["key"] for e in _container(obj)["env"] if "valueFrom" in e]
        assert refs == [key]


def test_pod_template_is_defaulted_never_overwritten() -> None:
    spec, _ = VARIANTS["pod template"]
    _, _, deployment, strong, _ = _children(spec)
    for obj in (deployment, strong):
        pod = obj["spec"]["template"]
        assert pod["metadata"]["labels"]["team"] == "a"
        assert pod["metadata"]["annotations"]["x"] == "y"
        assert pod["spec"]["serviceAccountName"] == "trainers"
        assert pod["spec"]["priorityClassName"] == "batch-low"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "reg"}]
        assert "automountServiceAccountToken" not in pod["spec"]
        assert _env(obj)["EXTRA"] == "1"
    assert _env(strong)["FLEXTRAIN_DEVICE"] == "cpu"  # the user's value, not the default
    names_in_order = [e["name"] for e in _container(strong)["env"]]
    assert len(names_in_order) == len(set(names_in_order))


def test_user_labels_win_over_app_defaults_but_not_over_selectors() -> None:
    j = job(podTemplate={"labels": {"app.kubernetes.io/part-of": "plant-7"}})
    plan = plan_job(j, {"cpu": CPU})
    obj = builders.build_tier_job(plan, plan.tiers[0], CPU, OWNER, SETTINGS)
    labels = obj["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "plant-7"
    assert labels[names.JOB_LABEL] == "job" and labels[names.TIER_LABEL] == "strong"


def test_restricted_pods_meet_the_restricted_profile() -> None:
    for obj in _children({})[2:]:
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert _container(obj)["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert {"name": "tmp", "mountPath": "/tmp"} in _container(obj)["volumeMounts"]


@pytest.mark.parametrize(
    ("job_name", "tier_name"),
    [
        ("a" * 253, "t" * 40),
        ("9lives.example.com", "x"),
        ("short", "deep"),
    ],
)
def test_child_names_are_valid_dns_labels(job_name: str, tier_name: str) -> None:
    for name in (
        names.secret_name(job_name),
        names.aggregator_name(job_name),
        names.tier_job_name(job_name, tier_name),
    ):
        assert len(name) <= 63 and name[0].isalpha() and name[-1].isalnum()
        assert all(c.isalnum() or c == "-" for c in name)
    assert len(names.tier_job_name(job_name, tier_name)) <= 53  # room for pod suffixes
    assert len(names.label_value(job_name)) <= 63
    assert names.aggregator_name(job_name) == names.aggregator_name(job_name)  # stable
    assert names.tier_job_name("job", "deep") == "job-deep"


def test_the_aggregator_goes_where_the_job_says_with_its_resources() -> None:
    spec = {
        "aggregator": {
            "nodeSelector": {"flextrain.dev/pool": "cpu"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "resources": {"requests": {"cpu": "2", "memory": "6Gi"}, "limits": {"cpu": "4"}},
        }
    }
    _, _, deployment, *_ = _children(spec)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"flextrain.dev/pool": "cpu", "kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert _container(deployment)["resources"] == {
        "requests": {"cpu": "2", "memory": "6Gi"},
        "limits": {"memory": "6Gi", "cpu": "4"},
    }
    # Unset: any Linux node, the operator's defaults.
    _, _, plain, *_ = _children({})
    assert plain["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "tolerations" not in plain["spec"]["template"]["spec"]
    assert _container(plain)["resources"] == {
        "requests": {"cpu": SETTINGS.aggregator_cpu, "memory": SETTINGS.aggregator_memory},
        "limits": {"memory": SETTINGS.aggregator_memory},
    }


def test_operator_defaults_fill_priority_and_pull_secrets_the_job_leaves_unset() -> None:
    settings = dataclasses.replace(SETTINGS, default_priority_class="factory-batch", default_image_pull_secrets=("regcred",))
    for obj in _children({}, settings)[2:]:
        pod = obj["spec"]["template"]["spec"]
        assert pod["priorityClassName"] == "factory-batch"
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    own = {"podTemplate": {"priorityClassName": "urgent", "imagePullSecrets": [{"name": "mine"}]}}
    for obj in _children(own, settings)[2:]:
        pod = obj["spec"]["template"]["spec"]
        assert (pod["priorityClassName"], pod["imagePullSecrets"]) == ("urgent", [{"name": "mine"}])


def test_the_aggregator_has_a_disruption_budget_and_a_network_policy() -> None:
    j = job()
    budget = builders.build_disruption_budget(j, OWNER)
    kubernetes_validate.validate(budget, K8S, strict=True)
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == names.aggregator_selector("job")
    settings = dataclasses.replace(SETTINGS, self_namespace="flextrain-system", self_labels={"app": "op"}, metrics_namespaces=("monitoring",))
    policy = builders.build_network_policy(j, OWNER, settings)
    kubernetes_validate.validate(policy, K8S, strict=True)
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    assert grpc_rule["from"][0] == {"podSelector": {"matchLabels": names.trainer_selector("job")}}
    assert grpc_rule["from"][1]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "flextrain-system"}}
    assert metrics_rule["ports"] == [{"protocol": "TCP", "port": SETTINGS.metrics_port}]


def test_the_aggregator_service_is_headless() -> None:
    """No virtual IP to allocate (the API server's slowest create in a burst of jobs): the
    name resolves to the ready aggregator pod, and clients re-resolve within a second."""
    from flextrain.trainer.client import CHANNEL_OPTIONS

    svc = builders.build_aggregator_service(job(), OWNER, SETTINGS)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"]
    assert dict(CHANNEL_OPTIONS)["grpc.dns_min_time_between_resolutions_ms"] <= 1_000


# -- TLS ----------------------------------------------------------------------------------

CHAIN = certs.issue(
    "flextrain default/job",
    builders.certificate_names(job(), SETTINGS),
    now=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
)


def _tls_children(spec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    j = job(**(spec or {}))
    tiers = {"cpu": CPU, "gpu": GPU, "arm": ARM}
    plan = plan_job(j, tiers)
    return [
        builders.build_secret(j, "s3cret", OWNER, CHAIN),
        builders.build_aggregator_service(j, OWNER, SETTINGS),
        builders.build_aggregator_deployment(plan, OWNER, SETTINGS, tls=True),
        *(builders.build_tier_job(plan, t, tiers[t.device_tier], OWNER, SETTINGS, tls=True) for t in plan.tiers),
    ]


def _volume(obj: dict[str, Any], name: str) -> dict[str, Any]:
    [volume] = [v for v in obj["spec"]["template"]["spec"].get("volumes", []) if v["name"] == name]
    return volume


def test_tls_children_pass_kubernetes_validate_strict() -> None:
    for obj in _tls_children():
        kubernetes_validate.validate(obj, K8S, strict=True)


def test_the_job_secret_holds_the_ca_and_the_aggregators_certificate() -> None:
    secret, *_ = _tls_children()
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data[certs.CA_CERT_KEY] == CHAIN.ca_cert
    assert data[certs.CERT_KEY] == CHAIN.cert and data[certs.KEY_KEY] == CHAIN.key
    assert data[certs.CA_KEY_KEY] == CHAIN.ca_key
    assert data[names.TOKEN_KEY] == "s3cret"


def test_trainers_mount_only_the_ca_and_verify_the_service_name() -> None:
    *_, first, second = _tls_children()
    for tier_job in (first, second):
        volume = _volume(tier_job, builders.TLS_VOLUME)
        assert volume["secret"]["secretName"] == "job-token"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
        env = _env(tier_job)
        assert env["FLEXTRAIN_TLS_CA"] == f"{builders.TLS_MOUNT_PATH}/ca.crt"
        assert env["FLEXTRAIN_TLS_SERVER_NAME"] == "job-aggregator.default.svc"
        assert "FLEXTRAIN_TLS_KEY" not in env and "FLEXTRAIN_TLS_CERT" not in env
        [mount] = [m for m in _container(tier_job)["volumeMounts"] if m["name"] == builders.TLS_VOLUME]
        assert mount == {"name": "tls", "mountPath": builders.TLS_MOUNT_PATH, "readOnly": True}
        assert "tls.key" not in json.dumps(tier_job["spec"]["template"])


def test_the_aggregator_serves_its_certificate_and_is_probed_on_the_plaintext_health_port() -> None:
    _, service, deployment, *_ = _tls_children()
    volume = _volume(deployment, builders.TLS_VOLUME)
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key"]
    env = _env(deployment)
    assert env["FLEXTRAIN_TLS_CERT"] == f"{builders.TLS_MOUNT_PATH}/tls.crt"
    assert env["FLEXTRAIN_TLS_KEY"] == f"{builders.TLS_MOUNT_PATH}/tls.key"
    assert env["FLEXTRAIN_HEALTH_PORT"] == str(SETTINGS.aggregator_health_port)
    container = _container(deployment)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": SETTINGS.aggregator_health_port}
    assert {"name": "health", "containerPort": SETTINGS.aggregator_health_port, "protocol": "TCP"} in container["ports"]
    assert deployment["metadata"]["annotations"][names.TLS_ANNOTATION] == "Enabled"
    assert "appProtocol" not in service["spec"]["ports"][0]  # not h2c: TLS


def test_a_plaintext_job_gets_no_tls_anywhere() -> None:
    j = job(aggregator={"tls": {"mode": "Disabled"}})
    assert not builders.tls_enabled(j) and builders.tls_enabled(job())
    objs = _children({"aggregator": {"tls": {"mode": "Disabled"}}})
    for obj in objs[2:]:
        assert not any(k.startswith("FLEXTRAIN_TLS") or k == "FLEXTRAIN_HEALTH_PORT" for k in _env(obj))
        assert builders.TLS_VOLUME not in {v["name"] for v in obj["spec"]["template"]["spec"].get("volumes", [])}
    secret, service, deployment = objs[:3]
    assert not set(secret["data"]) & {"ca.crt", "tls.crt", "tls.key", "ca.key"}
    assert service["spec"]["ports"][0]["appProtocol"] == "kubernetes.io/h2c"
    assert deployment["metadata"]["annotations"][names.TLS_ANNOTATION] == "Disabled"


CERT_MANAGER = dataclasses.replace(SETTINGS, tls_issuer_name="flextrain-ca", tls_issuer_kind="ClusterIssuer")


def test_with_cert_manager_the_pods_mount_the_secret_cert_manager_writes() -> None:
    j = job()
    tiers = {"cpu": CPU, "gpu": GPU, "arm": ARM}
    plan = plan_job(j, tiers)
    deployment = builders.build_aggregator_deployment(plan, OWNER, CERT_MANAGER, tls=True)
    volume = _volume(deployment, builders.TLS_VOLUME)
    assert volume["secret"]["secretName"] == "job-tls"
    assert [i["key"] for i in volume["secret"]["items"]] == ["tls.crt", "tls.key"]
    for t in plan.tiers:
        tier_job = builders.build_tier_job(plan, t, tiers[t.device_tier], OWNER, CERT_MANAGER, tls=True)
        volume = _volume(tier_job, builders.TLS_VOLUME)
        assert volume["secret"]["secretName"] == "job-tls"
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]


def test_the_cert_manager_certificate_names_the_service_and_the_issuer() -> None:
    cert = builders.build_certificate(job(), OWNER, CERT_MANAGER)
    assert (cert["apiVersion"], cert["kind"], cert["metadata"]["name"]) == ("cert-manager.io/v1", "Certificate", "job-tls")
    assert cert["metadata"]["ownerReferences"] == [OWNER]
    spec = cert["spec"]
    assert spec["secretName"] == "job-tls"
    assert spec["dnsNames"] == [
        "job-aggregator", "job-aggregator.default", "job-aggregator.default.svc",
        "job-aggregator.default.svc.cluster.local",
    ]
    assert spec["issuerRef"] == {"name": "flextrain-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    assert (spec["duration"], spec["renewBefore"]) == ("8760h", "2891h")  # 365 days, 0.33 of it
    assert spec["usages"] == ["server auth", "digital signature"]
    assert spec["secretTemplate"]["labels"][names.JOB_LABEL] == "job"
