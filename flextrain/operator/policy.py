"""The tenancy policy: what a FlexTrainJob, written by any user of its namespace, may
make the operator run. Operator-wide (Helm values -> FLEXTRAIN_OPERATOR_* variables):

- `allowed_images`: prefixes `spec.image` must start with; by default only the
  operator's own trainer image repository (any tag or digest of it);
- `allow_service_account`: whether `spec.podTemplate.serviceAccountName` may be set
  (default no: the job's pods run as the namespace's default account with no API token
  mounted);
- `host_path_prefixes`: node directories a `hostPath` data source may lie under
  (default none: hostPath data is refused);
- `aggregator_toleration_keys`: taint keys `spec.aggregator.tolerations` may tolerate
  (default none: a tenant's aggregator stays off tainted nodes, e.g. GPU servers or the
  control plane; `*` allows any);
- `allow_plaintext`: whether a job may turn TLS off (`spec.aggregator.tls.mode:
  Disabled`; default yes, TLS stays the default).

The operator refuses a job that breaks it (`violations`, a condition and an Event,
nothing created); the chart's ValidatingAdmissionPolicy holds the same rules, so the
API server refuses such a job at `kubectl apply` already (charts/flextrain/templates/
policy.yaml, docs/install.md). DeviceTiers are cluster-scoped and written by cluster
admins: their `image` is not a tenant's choice and is not checked here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flextrain.api.flextrainjob import TLS_DISABLED, DataSource, FlexTrainJob
from flextrain.operator.config import OperatorSettings


@dataclass(frozen=True)
class Violation:
    """One field of a job the policy does not allow."""

    field: str
    value: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.field} {self.value!r} is not allowed by the operator's policy: {self.allowed}"


def image_prefixes(settings: OperatorSettings) -> tuple[str, ...]:
    """The image prefixes in force: the configured ones, else the default image's
    repository with any tag or digest."""
    if settings.allowed_images:
        return settings.allowed_images
    repository = image_repository(settings.image)
    return (repository + ":", repository + "@")


def image_repository(image: str) -> str:
    """`image` without its tag and digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def path_allowed(path: str, prefixes: Sequence[str]) -> bool:
    """`path` is one of `prefixes` or lies below one (whole path elements)."""
    for prefix in prefixes:
        base = prefix.rstrip("/") or "/"
        if path == base or path.startswith(base if base == "/" else base + "/"):
            return True
    return False


def violations(job: FlexTrainJob, settings: OperatorSettings) -> list[Violation]:
    """What `job` asks for that the policy does not allow (empty: allowed)."""
    found: list[Violation] = []
    spec = job.spec
    prefixes = image_prefixes(settings)
    if spec.image is not None and "*" not in prefixes and not spec.image.startswith(prefixes):
        found.append(Violation("spec.image", spec.image, "images must start with " + " or ".join(prefixes)))
    template = spec.pod_template
    if template and template.service_account_name and not settings.allow_service_account:
        found.append(
            Violation(
                "spec.podTemplate.serviceAccountName",
                template.service_account_name,
                "jobs run as the namespace's default account with no API token mounted",
            )
        )
    tls = spec.aggregator.tls if spec.aggregator else None
    if tls is not None and tls.mode == TLS_DISABLED and not settings.allow_plaintext:
        found.append(
            Violation(
                "spec.aggregator.tls.mode",
                tls.mode,
                "the aggregator must serve TLS (mode Enabled, the default): plaintext is off in this cluster",
            )
        )
    sources: list[tuple[str, DataSource | None]] = [("spec.dataset.source", spec.dataset.source)]
    sources += [(f"spec.tiers[{i}].dataSource", t.data_source) for i, t in enumerate(spec.tiers)]
    for where, source in sources:
        if source is not None and source.host_path is not None:
            path = source.host_path.path
            if not path_allowed(path, settings.host_path_prefixes):
                allowed = (
                    "hostPath data must lie under " + " or ".join(settings.host_path_prefixes)
                    if settings.host_path_prefixes
                    else "hostPath data sources are not allowed (use a persistentVolumeClaim)"
                )
                found.append(Violation(f"{where}.hostPath.path", path, allowed))
    keys = settings.aggregator_toleration_keys
    tolerations = spec.aggregator.tolerations if spec.aggregator else None
    for i, toleration in enumerate(tolerations or ()):
        if "*" in keys or (toleration.key and toleration.key in keys):
            continue
        allowed = (
            "aggregator tolerations may name only the taint keys " + ", ".join(keys)
            if keys
            else "jobs may not give the aggregator tolerations (it runs on untainted nodes)"
        )
        what = toleration.key or "(empty key: every taint)"
        found.append(Violation(f"spec.aggregator.tolerations[{i}].key", what, allowed))
    return found
