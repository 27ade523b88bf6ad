"""Names and labels of the objects the operator creates for a FlexTrainJob.

Child names are valid DNS-1035 labels (Services need that) of at most 63 characters:
`<job>-aggregator`, `<job>-token`, `<job>-<tier>`. A name that would be longer is cut
and ends in a hash of the full name, so it stays unique and stable. Event names
(`<job>.<16 hex>`) are cut the same way at 253 characters.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from flextrain.api.common import API_VERSION

JOB_LABEL: Final[str] = "flextrain.dev/job"
TIER_LABEL: Final[str] = "flextrain.dev/tier"
COMPONENT_LABEL: Final[str] = "flextrain.dev/component"
APP_NAME: Final[str] = "app.kubernetes.io/name"
APP_INSTANCE: Final[str] = "app.kubernetes.io/instance"
APP_COMPONENT: Final[str] = "app.kubernetes.io/component"
APP_PART_OF: Final[str] = "app.kubernetes.io/part-of"
APP_MANAGED_BY: Final[str] = "app.kubernetes.io/managed-by"
MANAGER: Final[str] = "flextrain-operator"

AGGREGATOR: Final[str] = "aggregator"
TRAINER: Final[str] = "trainer"

#: The annotation on the aggregator Deployment holding the depths it was started with.
DEPTHS_ANNOTATION: Final[str] = "flextrain.dev/depths"
#: ... and the `spec.tiers` it was started with (a difference means `tiers` was edited).
TIERS_ANNOTATION: Final[str] = "flextrain.dev/tiers"
TOKEN_KEY: Final[str] = "token"
#: The annotation on the aggregator Deployment saying whether it serves TLS ("Enabled" or
#: "Disabled"); the trainers and the operator's status client follow it.
TLS_ANNOTATION: Final[str] = "flextrain.dev/tls"

GRPC_PORT_NAME: Final[str] = "grpc"
HEALTH_PORT_NAME: Final[str] = "health"
METRICS_PORT_NAME: Final[str] = "metrics"

MAX_NAME: Final[int] = 63
#: Kueue's API: the Workload of a job with spec.queueName, the ResourceFlavors it names.
KUEUE_API_VERSION: Final[str] = "kueue.x-k8s.io/v1beta2"
#: The longest object name the API accepts (a DNS-1123 subdomain), Events included.
MAX_OBJECT_NAME: Final[int] = 253
_INVALID: Final = re.compile(r"[^a-z0-9-]")


def _fit(name: str, limit: int = MAX_NAME) -> str:
    name = _INVALID.sub("-", name.lower())
    if not name[:1].isalpha():
        name = "ft-" + name
    if len(name) <= limit:
        return name.rstrip("-") or "ft"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def _cut(name: str, limit: int) -> str:
    """`name`, or when longer than `limit` its start plus a hash of all of it."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-.')}-{digest}"


def label_value(job: str) -> str:
    """The value of the flextrain.dev/job label: the job name, cut with a hash past 63."""
    return _cut(job, MAX_NAME)


def event_name(involved: str, unique: str) -> str:
    """The name of an Event about object `involved`: `<involved>.<unique>`, as kubectl and
    the controllers name theirs. Object names may be 253 characters long, the limit of the
    Event's own name too: a name that would be longer is cut and ends in a hash of the
    whole object name, so it stays a valid DNS-1123 subdomain and tells jobs apart."""
    return f"{_cut(involved, MAX_OBJECT_NAME - len(unique) - 1)}.{unique}"


def secret_name(job: str) -> str:
    return _fit(f"{job}-token")


def tls_server_name(job: str, namespace: str) -> str:
    """The name trainers and the operator verify in the aggregator's certificate:
    `<svc>.<ns>.svc` (the certificate also names `<svc>`, `<svc>.<ns>` and the fully
    qualified `<svc>.<ns>.svc.<cluster domain>`)."""
    return f"{aggregator_name(job)}.{namespace}.svc"


def certificate_name(job: str) -> str:
    """Name of the job's cert-manager Certificate and of the Secret cert-manager writes."""
    return _fit(f"{job}-tls")


def checkpoint_claim_name(job: str) -> str:
    """Name of the PersistentVolumeClaim the operator creates for the job's checkpoints."""
    return _fit(f"{job}-checkpoints")


def aggregator_name(job: str) -> str:
    """Name of the aggregator Deployment and of its Service."""
    return _fit(f"{job}-aggregator")


def workload_name(job: str) -> str:
    """Name of the job's Kueue Workload (jobs with spec.queueName): the job's own name."""
    return _fit(job, MAX_OBJECT_NAME)


def tier_job_name(job: str, tier: str) -> str:
    # Indexed Job pods are named <job>-<index>-<5 random>; leave room for the suffix so the
    # pod hostname stays within 63 characters.
    return _fit(f"{job}-{tier}", MAX_NAME - 10)


def job_labels(job: str) -> dict[str, str]:
    """Labels every child of the job carries."""
    return {
        JOB_LABEL: label_value(job),
        APP_NAME: "flextrain",
        APP_INSTANCE: label_value(job),
        APP_PART_OF: "flextrain",
        APP_MANAGED_BY: MANAGER,
    }


def aggregator_labels(job: str) -> dict[str, str]:
    return {**job_labels(job), COMPONENT_LABEL: AGGREGATOR, APP_COMPONENT: AGGREGATOR}


def aggregator_selector(job: str) -> dict[str, str]:
    """The labels the aggregator Deployment and Service select pods by."""
    return {JOB_LABEL: label_value(job), COMPONENT_LABEL: AGGREGATOR}


def trainer_selector(job: str) -> dict[str, str]:
    """The labels every trainer pod of the job carries, whatever its tier."""
    return {JOB_LABEL: label_value(job), COMPONENT_LABEL: TRAINER}


def trainer_labels(job: str, tier: str) -> dict[str, str]:
    return {
        **job_labels(job),
        TIER_LABEL: tier,
        COMPONENT_LABEL: TRAINER,
        APP_COMPONENT: TRAINER,
    }


def owner_reference(
    kind: str, name: str, uid: str, api_version: str = API_VERSION
) -> dict[str, object]:
    """An ownerReference making the owner the child's controller (deletion cascades)."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
