"""Builders of a FlexTrainJob's children: pure functions returning plain dicts.

Each takes the owner explicitly (an ownerReference dict with controller=true), so the
same builder serves the operator, tests and `kubectl`-style rendering. The user's
`spec.podTemplate` is only ever defaulted around, never overwritten: the operator's
labels, environment and pod settings fill in what the user did not set.

| child | name | what |
|---|---|---|
| Secret | `<job>-token` | the per-job token trainers and aggregator authenticate with, and (TLS) the job's CA and the aggregator's serving certificate (flextrain.operator.certs) |
| Service | `<job>-aggregator` | headless: gRPC (and metrics) of the aggregator |
| Deployment | `<job>-aggregator` | 1 replica, Recreate, gRPC health probes, checkpoint volume |
| Job (batch/v1) | `<job>-<tier>` | Indexed, one completion index per replica = data shard |
| Workload (kueue.x-k8s.io) | `<job>` | jobs with `spec.queueName`: one pod set per tier and one for the aggregator |
| Certificate (cert-manager.io/v1) | `<job>-tls` | only when the operator is set up with a cert-manager issuer: the aggregator's serving certificate, written by cert-manager into Secret `<job>-tls` |
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flextrain.api.devicetier import GPU_RESOURCE, DeviceTier
from flextrain.api.flextrainjob import AGGREGATOR_POD_SET, DataSource, FlexTrainJob, PodTemplate
from flextrain.api.quantity import parse_quantity
from flextrain.contract import env as contract
from flextrain.contract.credentials import secret_key_of, tier_key
from flextrain.contract.env import EXIT_PERMANENT, AggregatorEnv, TrainerEnv
from flextrain.jobplan import JobPlan, TierPlan
from flextrain.operator import certs, names
from flextrain.operator.config import OperatorSettings
from flextrain.operator.tiers import node_selector

JSON = dict[str, Any]


@dataclass(frozen=True)
class Placement:
    """Where Kueue admitted a pod set: the node labels and tolerations of the
    ResourceFlavors it assigned, added to the pods' own (which win on a conflicting key;
    Kueue assigns only flavors the pods' own selector allows)."""

    node_labels: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


def _place(pod_spec: JSON, placement: Placement | None) -> None:
    if placement is None:
        return
    if placement.node_labels:
        pod_spec["nodeSelector"] = {**placement.node_labels, **pod_spec.get("nodeSelector", {})}
    own = list(pod_spec.get("tolerations", []))
    extra = [dict(t) for t in placement.tolerations if dict(t) not in own]
    if extra:
        pod_spec["tolerations"] = [*own, *extra]

TRAINER_CONTAINER = "trainer"
AGGREGATOR_CONTAINER = "aggregator"
#: Where the TLS files of the job's Secret are mounted (read-only) in its pods.
TLS_MOUNT_PATH = "/var/run/flextrain/tls"
TLS_VOLUME = "tls"
#: Exit code of a trainer that cannot succeed by retrying (bad environment, rejected
#: token, unknown job or tier, depth mismatch): that replica's index fails at once.


def _meta(name: str, namespace: str, labels: Mapping[str, str], owner: JSON) -> JSON:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(labels),
        "ownerReferences": [dict(owner)],
    }


def plain_job(job: FlexTrainJob) -> FlexTrainJob:
    """The job with only name and namespace as metadata and no status: what the aggregator
    is started with (stable whatever the API server adds to metadata)."""
    meta = type(job.metadata)(name=job.metadata.name, namespace=job.metadata.namespace)
    return job.model_copy(update={"metadata": meta, "status": None})


def tiers_wire(job: FlexTrainJob) -> list[JSON]:
    """`spec.tiers` in wire form: recorded on the aggregator to detect later edits."""
    return [t.to_wire() for t in job.spec.tiers]


def partition_label(job: FlexTrainJob) -> str:
    """FLEXTRAIN_PARTITION of the job's trainers (the trainer checks it against Join)."""
    part = job.spec.dataset.partition
    return contract.partition_label(part.scheme, part.alpha)


# -- pod template defaulting ---------------------------------------------------------


def _pod_labels(template: PodTemplate | None, ours: Mapping[str, str]) -> dict[str, str]:
    # The user's labels win over the app.kubernetes.io/* defaults; flextrain.dev/* keys
    # (the selectors) are reserved by the API, so they cannot collide.
    reserved = {k: v for k, v in ours.items() if k.startswith("flextrain.dev/")}
    defaults = {k: v for k, v in ours.items() if k not in reserved}
    return {**defaults, **((template.labels if template else None) or {}), **reserved}


def _pod_annotations(template: PodTemplate | None, ours: Mapping[str, str]) -> dict[str, str]:
    return {**ours, **((template.annotations if template else None) or {})}


def _env(template: PodTemplate | None, ours: Sequence[JSON]) -> list[JSON]:
    """The operator's variables, with any the user set replacing them by name."""
    user = {e.name: e.value for e in (template.env if template else None) or []}
    out = [
        {"name": e["name"], "value": user.pop(e["name"])} if e["name"] in user else e for e in ours
    ]
    out += [{"name": k, "value": v} for k, v in user.items()]
    return out


def _pod_spec_defaults(template: PodTemplate | None, spec: JSON, settings: OperatorSettings) -> JSON:
    """The pod template's account, priority class and pull secrets; the operator-wide
    defaults where the job names none."""
    if template and template.service_account_name:
        spec["serviceAccountName"] = template.service_account_name
    else:
        spec["automountServiceAccountToken"] = False  # neither program talks to the API
    priority = (template.priority_class_name if template else None) or settings.default_priority_class
    if priority:
        spec["priorityClassName"] = priority
    if template and template.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s.name} for s in template.image_pull_secrets]
    elif settings.default_image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in settings.default_image_pull_secrets]
    return spec


def _security(settings: OperatorSettings) -> tuple[JSON, JSON]:
    """(pod securityContext, container securityContext) of the restricted profile."""
    if not settings.restricted_pods:
        return {}, {}
    pod = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod, container


#: The label every namespace carries with its own name (Kubernetes 1.22+).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def _contract_env(variables: Mapping[str, str], secret: JSON) -> list[JSON]:
    """A process's contract variables as container env, with `secret` (its key from
    the job's Secret) second, where the builders always put it."""
    env = [{"name": k, "value": v} for k, v in variables.items()]
    env.insert(1, secret)
    return env


def _secret_env(variable: str, job_name: str, key: str) -> JSON:
    """`variable` read from `key` of the job's Secret."""
    return {
        "name": variable,
        "valueFrom": {"secretKeyRef": {"name": names.secret_name(job_name), "key": key}},
    }


def _data_volume(
    source: DataSource | None, settings: OperatorSettings
) -> tuple[str | None, list[JSON], list[JSON]]:
    """(FLEXTRAIN_DATA_DIR, volumes, volumeMounts) for a dataset source."""
    if source is None:
        return None, [], []
    if source.path:
        return source.path, [], []  # a directory inside the image
    if source.persistent_volume_claim:
        pvc = source.persistent_volume_claim
        volume = {
            "name": "data",
            "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True},
        }
        mount: JSON = {"name": "data", "mountPath": settings.data_mount_path, "readOnly": True}
        if pvc.sub_path:
            mount["subPath"] = pvc.sub_path
        return settings.data_mount_path, [volume], [mount]
    assert source.host_path is not None  # exactly one source is set (API validation)
    volume = {"name": "data", "hostPath": {"path": source.host_path.path, "type": "Directory"}}
    mount = {"name": "data", "mountPath": settings.data_mount_path, "readOnly": True}
    return settings.data_mount_path, [volume], [mount]


def _tmp(settings: OperatorSettings) -> tuple[list[JSON], list[JSON], list[JSON]]:
    """(volumes, mounts, env) giving programs a writable /tmp under a read-only root."""
    if not settings.restricted_pods:
        return [], [], []
    return (
        [{"name": "tmp", "emptyDir": {}}],
        [{"name": "tmp", "mountPath": "/tmp"}],
        [{"name": "HOME", "value": "/tmp"}],
    )


def tls_enabled(job: FlexTrainJob) -> bool:
    """The job asks for TLS (the default: `spec.aggregator.tls.mode` unset or Enabled)."""
    return job.spec.aggregator is None or job.spec.aggregator.tls_enabled


def tls_secret_name(job_name: str, settings: OperatorSettings) -> str:
    """The Secret holding the job's `ca.crt`, `tls.crt` and `tls.key`: the job's own
    (`<job>-token`), or the one cert-manager writes (`<job>-tls`)."""
    return names.certificate_name(job_name) if settings.cert_manager else names.secret_name(job_name)


def _tls_volume(secret: str, keys: Sequence[str]) -> tuple[JSON, JSON]:
    """(volume, mount) of `keys` of the TLS Secret only: trainers get the CA alone,
    never the serving key (a Secret volume without `items` would hold every key)."""
    volume = {
        "name": TLS_VOLUME,
        "secret": {
            "secretName": secret,
            "items": [{"key": k, "path": k} for k in keys],
            "defaultMode": 0o444,
        },
    }
    return volume, {"name": TLS_VOLUME, "mountPath": TLS_MOUNT_PATH, "readOnly": True}


def certificate_names(job: FlexTrainJob, settings: OperatorSettings) -> list[str]:
    """The DNS names of the aggregator's serving certificate: its Service's names."""
    return certs.service_dns_names(
        names.aggregator_name(job.metadata.name), job.metadata.namespace or "default", settings.cluster_domain
    )


# -- the children ---------------------------------------------------------------------


def secret_data(
    job: FlexTrainJob, token: str, certificates: certs.Certificates | None = None
) -> dict[str, str]:
    """The job Secret's data: the random job token under key `token` (the aggregator's),
    each tier's key under `tier-<tier>` (that tier's trainers'; see
    flextrain.contract.credentials) and, with `certificates`, the job's CA and the
    aggregator's serving certificate (`ca.crt`, `ca.key`, `tls.crt`, `tls.key`; see
    flextrain.operator.certs), base64-encoded."""
    name = job.metadata.name
    plain = {names.TOKEN_KEY: token}
    plain |= {secret_key_of(t.name): tier_key(token, name, t.name) for t in job.spec.tiers}
    if certificates is not None:
        plain |= certificates.secret_data()
    return {key: base64.b64encode(value.encode()).decode() for key, value in plain.items()}


def build_secret(
    job: FlexTrainJob, token: str, owner: JSON, certificates: certs.Certificates | None = None
) -> JSON:
    """The job's Secret (see `secret_data`)."""
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(names.secret_name(name), namespace, names.job_labels(name), owner),
        "type": "Opaque",
        "data": secret_data(job, token, certificates),
    }


def build_certificate(job: FlexTrainJob, owner: JSON, settings: OperatorSettings) -> JSON:
    """The cert-manager Certificate of the aggregator (when the operator is set up with
    an issuer): ECDSA P-256, a new key at each renewal, the Service's DNS names, the
    operator's lifetime and renewal point; cert-manager writes Secret `<job>-tls`."""
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    hours = settings.tls_certificate_days * 24
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": _meta(
            names.certificate_name(name), namespace, names.aggregator_labels(name), owner
        ),
        "spec": {
            "secretName": names.certificate_name(name),
            "secretTemplate": {"labels": names.aggregator_labels(name)},
            "dnsNames": certificate_names(job, settings),
            "duration": f"{hours:g}h",
            "renewBefore": f"{hours * settings.tls_renew_fraction:.0f}h",
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
            "issuerRef": {
                "name": settings.tls_issuer_name,
                "kind": settings.tls_issuer_kind,
                "group": settings.tls_issuer_group,
            },
        },
    }


def build_aggregator_service(job: FlexTrainJob, owner: JSON, settings: OperatorSettings) -> JSON:
    """The aggregator's Service (gRPC, plus metrics when enabled), headless: its name
    resolves to the ready aggregator pod itself. A virtual IP would add nothing for one
    pod whose clients re-resolve (FLEXTRAIN's gRPC channels re-resolve within a second),
    and allocating one is the API server's slowest create: measured with 50 jobs created
    at once, 0.50 s p50 for a ClusterIP Service (allocations take turns) against 0.02 s
    for the other children."""
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    grpc_port: JSON = {
        "name": names.GRPC_PORT_NAME,
        "port": settings.aggregator_port,
        "targetPort": names.GRPC_PORT_NAME,
        "protocol": "TCP",
    }
    if not tls_enabled(job):
        grpc_port["appProtocol"] = "kubernetes.io/h2c"  # HTTP/2 in cleartext
    ports: list[JSON] = [grpc_port]
    if settings.metrics_port:
        ports.append(
            {
                "name": names.METRICS_PORT_NAME,
                "port": settings.metrics_port,
                "targetPort": names.METRICS_PORT_NAME,
                "protocol": "TCP",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            names.aggregator_name(name), namespace, names.aggregator_labels(name), owner
        ),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "None",
            "selector": names.aggregator_selector(name),
            "ports": ports,
        },
    }


def build_network_policy(job: FlexTrainJob, owner: JSON, settings: OperatorSettings) -> JSON:
    """The aggregator's NetworkPolicy: its gRPC port only from the job's trainer pods and
    the operator (pods with `self_labels` in `self_namespace`), its metrics port only from
    `metrics_namespaces`; nothing else may reach the aggregator pod (its egress is free)."""
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    grpc_port = [{"protocol": "TCP", "port": settings.aggregator_port}]
    peers: list[JSON] = [{"podSelector": {"matchLabels": names.trainer_selector(name)}}]
    if settings.self_namespace:
        operator: JSON = {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.self_namespace}}
        }
        if settings.self_labels:
            operator["podSelector"] = {"matchLabels": dict(settings.self_labels)}
        peers.append(operator)
    ingress: list[JSON] = [{"from": peers, "ports": grpc_port}]
    if settings.metrics_port and settings.metrics_namespaces:
        scrapers = {
            "namespaceSelector": {
                "matchExpressions": [
                    {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": list(settings.metrics_namespaces)}
                ]
            }
        }
        ingress.append({"from": [scrapers], "ports": [{"protocol": "TCP", "port": settings.metrics_port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(
            names.aggregator_name(name), namespace, names.aggregator_labels(name), owner
        ),
        "spec": {
            "podSelector": {"matchLabels": names.aggregator_selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def operator_claim(job: FlexTrainJob) -> bool:
    """True when the operator creates the job's checkpoint claim (the default: the job
    names no claim of its own and did not ask for an emptyDir)."""
    ckpt = job.spec.checkpoint
    return not (ckpt and (ckpt.persistent_volume_claim or ckpt.empty_dir))


def checkpoint_claim(job: FlexTrainJob) -> tuple[str, str | None] | None:
    """(claim, subPath) holding the job's checkpoints; None for an emptyDir."""
    ckpt = job.spec.checkpoint
    if ckpt and ckpt.persistent_volume_claim:
        pvc = ckpt.persistent_volume_claim
        return pvc.claim_name, pvc.sub_path
    if operator_claim(job):
        return names.checkpoint_claim_name(job.metadata.name), None
    return None


def build_checkpoint_claim(job: FlexTrainJob, owner: JSON, settings: OperatorSettings) -> JSON:
    """The job's checkpoint claim: ReadWriteOnce, `spec.checkpoint.size` or the operator's
    size, the operator's StorageClass (else the cluster default). Owned by the job: it
    lives as long as the job object (the final model with it), and goes with it."""
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    size = (job.spec.checkpoint.size if job.spec.checkpoint else None) or settings.checkpoint_size
    spec: JSON = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if settings.checkpoint_storage_class:
        spec["storageClassName"] = settings.checkpoint_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(
            names.checkpoint_claim_name(name), namespace, names.aggregator_labels(name), owner
        ),
        "spec": spec,
    }


def _checkpoint_volume(job: FlexTrainJob, settings: OperatorSettings) -> tuple[str, JSON, JSON]:
    """(FLEXTRAIN_CHECKPOINT_DIR, volume, mount): the job's own claim, the operator's
    claim, or an emptyDir when the job asks for one."""
    ckpt = job.spec.checkpoint
    claim = checkpoint_claim(job)
    if claim is not None:
        path = ckpt.path if ckpt and ckpt.path else settings.checkpoint_mount_path
        mount: JSON = {"name": "checkpoints", "mountPath": path}
        if claim[1]:
            mount["subPath"] = claim[1]
        volume = {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim[0]}}
        return path, volume, mount
    path = ckpt.path if ckpt and ckpt.path else settings.checkpoint_mount_path
    return path, {"name": "checkpoints", "emptyDir": {}}, {"name": "checkpoints", "mountPath": path}


def aggregator_replicas(job: FlexTrainJob) -> int:
    """1, or 0 while suspended when a checkpoint claim keeps the model (resuming reloads it);
    with an emptyDir the aggregator keeps running so the model is not lost."""
    return 0 if job.spec.suspend and checkpoint_claim(job) is not None else 1


def build_aggregator_deployment(
    plan: JobPlan,
    owner: JSON,
    settings: OperatorSettings,
    *,
    replicas: int = 1,
    placement: Placement | None = None,
    tls: bool = False,
) -> JSON:
    """The aggregator: 1 replica (Recreate: never two aggregators on one checkpoint),
    started with the job plan, probed through the standard gRPC health service.
    `placement`: where Kueue admitted it (jobs with spec.queueName). With `tls`, it
    serves TLS with `tls.crt`/`tls.key` of the job's Secret, and the probes go to the
    plaintext health port (the kubelet's gRPC probes cannot speak TLS)."""
    job = plan.job
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    template = job.spec.pod_template
    ckpt_dir, ckpt_volume, ckpt_mount = _checkpoint_volume(job, settings)
    data_dir, data_volumes, data_mounts = _data_volume(job.spec.dataset.source, settings)
    spec_placement = job.spec.aggregator
    tmp_volumes, tmp_mounts, tmp_env = _tmp(settings)
    pod_security, container_security = _security(settings)

    variables = AggregatorEnv(
        plan=JobPlan(plain_job(job), plan.tiers).to_json(),
        port=settings.aggregator_port,
        metrics_port=settings.metrics_port,
        checkpoint_dir=Path(ckpt_dir),
        device="cpu",
        log_format="json",
        data_dir=Path(data_dir) if data_dir else None,
        tls_cert=Path(TLS_MOUNT_PATH, certs.CERT_KEY) if tls else None,
        tls_key=Path(TLS_MOUNT_PATH, certs.KEY_KEY) if tls else None,
        health_port=settings.aggregator_health_port if tls else 0,
    ).to_env(leave_out=(contract.TOKEN,))
    env = [*_contract_env(variables, _secret_env(contract.TOKEN, name, names.TOKEN_KEY)), *tmp_env]
    ports: list[JSON] = [
        {"name": names.GRPC_PORT_NAME, "containerPort": settings.aggregator_port, "protocol": "TCP"}
    ]
    tls_volumes: list[JSON] = []
    tls_mounts: list[JSON] = []
    if tls:
        volume, mount = _tls_volume(tls_secret_name(name, settings), (certs.CERT_KEY, certs.KEY_KEY))
        tls_volumes, tls_mounts = [volume], [mount]
        ports.append(
            {"name": names.HEALTH_PORT_NAME, "containerPort": settings.aggregator_health_port, "protocol": "TCP"}
        )
    if settings.metrics_port:
        ports.append(
            {
                "name": names.METRICS_PORT_NAME,
                "containerPort": settings.metrics_port,
                "protocol": "TCP",
            }
        )
    grpc_probe = {"grpc": {"port": settings.aggregator_health_port if tls else settings.aggregator_port}}
    container: JSON = {
        "name": AGGREGATOR_CONTAINER,
        "image": job.spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["flextrain", "aggregator"],
        "env": _env(template, env),
        "ports": ports,
        # Loading torch and the last checkpoint can take a while: the startup probe allows
        # 5 minutes before liveness takes over.
        "startupProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 60},
        "readinessProbe": {**grpc_probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**grpc_probe, "periodSeconds": 10, "failureThreshold": 6},
        "resources": _aggregator_resources(job, settings),
        "volumeMounts": [ckpt_mount, *data_mounts, *tmp_mounts, *tls_mounts],
    }
    if container_security:
        container["securityContext"] = container_security
    pod_spec: JSON = {
        "containers": [container],
        "volumes": [ckpt_volume, *data_volumes, *tmp_volumes, *tls_volumes],
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "nodeSelector": {
            **((spec_placement.node_selector or {}) if spec_placement else {}),
            "kubernetes.io/os": "linux",
        },
    }
    if spec_placement and spec_placement.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in spec_placement.tolerations]
    _place(pod_spec, placement)
    if pod_security:
        pod_spec["securityContext"] = pod_security
    labels = names.aggregator_labels(name)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **_meta(names.aggregator_name(name), namespace, labels, owner),
            "annotations": {
                names.DEPTHS_ANNOTATION: json.dumps(plan.depths, sort_keys=True),
                names.TIERS_ANNOTATION: json.dumps(tiers_wire(job), sort_keys=True),
                names.TLS_ANNOTATION: "Enabled" if tls else "Disabled",
            },
        },
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": names.aggregator_selector(name)},
            "template": {
                "metadata": {
                    "labels": _pod_labels(template, labels),
                    "annotations": _pod_annotations(
                        template, {"kubectl.kubernetes.io/default-container": AGGREGATOR_CONTAINER}
                    ),
                },
                "spec": _pod_spec_defaults(template, pod_spec, settings),
            },
        },
    }


def _aggregator_resources(job: FlexTrainJob, settings: OperatorSettings) -> JSON:
    """The job's aggregator resources over the operator's defaults (a memory request
    without a limit gets it as its limit)."""
    res = job.spec.aggregator.resources if job.spec.aggregator else None
    requests: JSON = {"cpu": settings.aggregator_cpu, "memory": settings.aggregator_memory}
    requests |= {str(k): v for k, v in ((res.requests if res else None) or {}).items()}
    limits: JSON = {"memory": requests["memory"]}
    limits |= {str(k): v for k, v in ((res.limits if res else None) or {}).items()}
    return {"requests": requests, "limits": limits}


def build_disruption_budget(job: FlexTrainJob, owner: JSON) -> JSON:
    """The aggregator's PodDisruptionBudget: a voluntary eviction (a node drain) waits
    while the aggregator runs. Training resumes from the last checkpoint after an
    involuntary loss; a drain should not cause one."""
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(
            names.aggregator_name(name), namespace, names.aggregator_labels(name), owner
        ),
        "spec": {
            "minAvailable": 1,
            "selector": {"matchLabels": names.aggregator_selector(name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _trainer_resources(device_tier: DeviceTier) -> JSON:
    res = device_tier.spec.resources
    requests: JSON = {str(k): v for k, v in (res.requests or {}).items()}
    limits: JSON = {str(k): v for k, v in (res.limits or {}).items()}
    acc = device_tier.spec.accelerator
    if acc.type == GPU_RESOURCE and acc.count:
        requests[GPU_RESOURCE] = str(acc.count)
        limits[GPU_RESOURCE] = str(acc.count)
    out: JSON = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _threads(device_tier: DeviceTier) -> int | None:
    """Torch threads for a trainer: the whole cores of its CPU limit (else request)."""
    res = device_tier.spec.resources
    cpu = (res.limits or {}).get("cpu") or (res.requests or {}).get("cpu")
    if cpu is None:
        return None
    return max(1, math.floor(parse_quantity(cpu)))


def build_tier_job(
    plan: JobPlan,
    tier: TierPlan,
    device_tier: DeviceTier,
    owner: JSON,
    settings: OperatorSettings,
    *,
    suspend: bool = False,
    placement: Placement | None = None,
    tls: bool = False,
) -> JSON:
    """One tier's Indexed Job: completion index i is replica i and trains data shard
    `tier.shard_offset + i` (the aggregator maps it from the replica index at Join).
    `placement`: where Kueue admitted the tier (jobs with spec.queueName). With `tls`,
    its trainers verify the aggregator against the job's CA (`ca.crt`, the only key of
    the job's Secret they mount) and its Service name."""
    job = plan.job
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    template = job.spec.pod_template
    service = names.aggregator_name(name)
    data_dir, data_volumes, data_mounts = _data_volume(tier.data_source, settings)
    tmp_volumes, tmp_mounts, tmp_env = _tmp(settings)
    pod_security, container_security = _security(settings)
    gpu = device_tier.spec.accelerator.type == GPU_RESOURCE

    variables = TrainerEnv(
        aggregator=settings.address_of(namespace, name, service),
        tier_key="",  # from the job's Secret
        job=name,
        tier=tier.name,
        depth=tier.depth,
        partition=partition_label(job),
        device="cuda" if gpu else "cpu",
        log_format="json",
        data_dir=Path(data_dir) if data_dir else None,
        threads=_threads(device_tier) or 0,
        tls_ca=Path(TLS_MOUNT_PATH, certs.CA_CERT_KEY) if tls else None,
        tls_server_name=names.tls_server_name(name, namespace) if tls else None,
    ).to_env(leave_out=(contract.TIER_KEY, contract.REPLICA_INDEX))
    tls_volumes: list[JSON] = []
    tls_mounts: list[JSON] = []
    if tls:
        volume, mount = _tls_volume(tls_secret_name(name, settings), (certs.CA_CERT_KEY,))
        tls_volumes, tls_mounts = [volume], [mount]
    env = [*_contract_env(variables, _secret_env(contract.TIER_KEY, name, secret_key_of(tier.name))), *tmp_env]
    container: JSON = {
        "name": TRAINER_CONTAINER,
        "image": device_tier.spec.image or job.spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["flextrain", "trainer"],
        # FLEXTRAIN_REPLICA_INDEX is left out: the trainer reads JOB_COMPLETION_INDEX.
        "env": _env(template, env),
        "resources": _trainer_resources(device_tier),
        "volumeMounts": [*data_mounts, *tmp_mounts, *tls_mounts],
    }
    if container_security:
        container["securityContext"] = container_security
    pod_spec: JSON = {
        "restartPolicy": "Never",
        "containers": [container],
        "nodeSelector": node_selector(device_tier),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
    }
    if device_tier.spec.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in device_tier.spec.tolerations]
    _place(pod_spec, placement)
    volumes = [*data_volumes, *tmp_volumes, *tls_volumes]
    if volumes:
        pod_spec["volumes"] = volumes
    if pod_security:
        pod_spec["securityContext"] = pod_security
    labels = names.trainer_labels(name, tier.name)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(names.tier_job_name(name, tier.name), namespace, labels, owner),
        "spec": {
            "completionMode": "Indexed",
            "completions": tier.replicas,
            "parallelism": tier.replicas,
            "backoffLimitPerIndex": settings.backoff_limit_per_index,
            "podFailurePolicy": {
                "rules": [
                    {
                        # A permanent trainer error fails that replica's index at once.
                        "action": "FailIndex",
                        "onExitCodes": {
                            "containerName": TRAINER_CONTAINER,
                            "operator": "In",
                            "values": [EXIT_PERMANENT],
                        },
                    },
                    {
                        # Preemption, eviction, node drain: retried, not counted as failures.
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "suspend": suspend,
            "template": {
                "metadata": {
                    "labels": _pod_labels(template, labels),
                    "annotations": _pod_annotations(
                        template, {"kubectl.kubernetes.io/default-container": TRAINER_CONTAINER}
                    ),
                },
                "spec": _pod_spec_defaults(template, pod_spec, settings),
            },
        },
    }


def _pod_set(name: str, count: int, pod: JSON) -> JSON:
    """A Workload pod set: what Kueue reads of a pod (its requests, placement and
    priority), not the environment or volumes."""
    spec = pod["spec"]
    containers = [
        {k: c[k] for k in ("name", "image", "resources") if k in c} for c in spec["containers"]
    ]
    kept = {k: spec[k] for k in ("nodeSelector", "tolerations", "affinity", "priorityClassName") if k in spec}
    return {
        "name": name,
        "count": count,
        "template": {"spec": {"restartPolicy": spec.get("restartPolicy", "Always"), **kept, "containers": containers}},
    }


def build_workload(
    plan: JobPlan,
    device_tiers: Mapping[str, DeviceTier],
    owner: JSON,
    settings: OperatorSettings,
) -> JSON:
    """The job's Kueue Workload (spec.queueName): one pod set per tier (its trainer pod,
    `replicas` of them) and one for the aggregator, so that Kueue admits every tier and
    the aggregator at once or none. Kueue answers with the flavors of each pod set
    (status.admission), which the tier Jobs and the aggregator are then built with. The
    caller checks that every tier's DeviceTier is known. `spec.active` follows
    `spec.suspend` (a suspended job gives its quota back)."""
    job = plan.job
    name, namespace = job.metadata.name, job.metadata.namespace or "default"
    pod_sets = []
    for tier in plan.tiers:
        built = build_tier_job(plan, tier, device_tiers[tier.device_tier], owner, settings)
        pod_sets.append(_pod_set(tier.name, tier.replicas, built["spec"]["template"]))
    aggregator = build_aggregator_deployment(plan, owner, settings)
    pod_sets.append(_pod_set(AGGREGATOR_POD_SET, 1, aggregator["spec"]["template"]))
    return {
        "apiVersion": names.KUEUE_API_VERSION,
        "kind": "Workload",
        "metadata": _meta(names.workload_name(name), namespace, names.job_labels(name), owner),
        "spec": {
            "queueName": job.spec.queue_name,
            "active": not job.spec.suspend,
            "podSets": pod_sets,
        },
    }
