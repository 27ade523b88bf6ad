"""Settings of the FlexTrain operator, read from `FLEXTRAIN_OPERATOR_*` environment
variables (the Helm chart sets them; `flextrain operator --help` lists the flags that
override the process-level ones).

| variable | attribute | default |
|---|---|---|
| FLEXTRAIN_OPERATOR_IMAGE | image | ghcr.io/flextrain/flextrain:<version> |
| FLEXTRAIN_OPERATOR_IMAGE_PULL_POLICY | image_pull_policy | IfNotPresent |
| FLEXTRAIN_OPERATOR_NAMESPACES | namespaces | (empty: cluster-wide) |
| FLEXTRAIN_OPERATOR_STATUS_INTERVAL | status_interval | 10 (seconds) |
| FLEXTRAIN_OPERATOR_STATUS_TIMEOUT | status_timeout | 3 (seconds) |
| FLEXTRAIN_OPERATOR_AGGREGATOR_PORT | aggregator_port | 50051 |
| FLEXTRAIN_OPERATOR_METRICS_PORT | metrics_port | 9090 |
| FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS | aggregator_address | {service}.{namespace}.svc:{port} |
| FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESSES | aggregator_addresses | (none) `ns/job=host:port,...` |
| FLEXTRAIN_OPERATOR_BACKOFF_LIMIT_PER_INDEX | backoff_limit_per_index | 3 |
| FLEXTRAIN_OPERATOR_AGGREGATOR_CPU / _MEMORY | aggregator_cpu / aggregator_memory | 1 / 2Gi |
| FLEXTRAIN_OPERATOR_RESTRICTED_PODS | restricted_pods | true |
| FLEXTRAIN_OPERATOR_EVENTS | events | true |
| FLEXTRAIN_OPERATOR_FINISH_GRACE | finish_grace | 60 (seconds) |
| FLEXTRAIN_OPERATOR_CLAIM_PENDING_AFTER | claim_pending_after | 60 (seconds) |
| FLEXTRAIN_OPERATOR_TIER_DEBOUNCE | tier_debounce | 1 (seconds) |
| FLEXTRAIN_OPERATOR_ALLOWED_IMAGES | allowed_images | (empty: the default image's repository) |
| FLEXTRAIN_OPERATOR_ALLOW_SERVICE_ACCOUNT | allow_service_account | false |
| FLEXTRAIN_OPERATOR_HOST_PATH_PREFIXES | host_path_prefixes | (empty: no hostPath data) |
| FLEXTRAIN_OPERATOR_AGGREGATOR_TOLERATION_KEYS | aggregator_toleration_keys | (empty: none) |
| FLEXTRAIN_OPERATOR_NETWORK_POLICY | network_policy | true |
| FLEXTRAIN_OPERATOR_SELF_NAMESPACE | self_namespace | (empty) |
| FLEXTRAIN_OPERATOR_SELF_LABELS | self_labels | (empty) `key=value,...` |
| FLEXTRAIN_OPERATOR_METRICS_NAMESPACES | metrics_namespaces | (empty: no one) |
| FLEXTRAIN_OPERATOR_DISRUPTION_BUDGET | disruption_budget | true |
| FLEXTRAIN_OPERATOR_SELF_METRICS_PORT | self_metrics_port | 0 (off) |
| FLEXTRAIN_OPERATOR_CHECKPOINT_STORAGE_CLASS | checkpoint_storage_class | (empty: the cluster's default) |
| FLEXTRAIN_OPERATOR_CHECKPOINT_SIZE | checkpoint_size | 1Gi |
| FLEXTRAIN_OPERATOR_DEFAULT_PRIORITY_CLASS | default_priority_class | (empty) |
| FLEXTRAIN_OPERATOR_DEFAULT_IMAGE_PULL_SECRETS | default_image_pull_secrets | (empty) |
| FLEXTRAIN_OPERATOR_LEADER_ELECTION | leader_election | false (the chart: true) |
| FLEXTRAIN_OPERATOR_LEADER_ELECTION_LEASE | leader_election_lease | flextrain-operator |
| FLEXTRAIN_OPERATOR_LEADER_ELECTION_NAMESPACE | leader_election_namespace | (empty: self_namespace) |
| FLEXTRAIN_OPERATOR_LEASE_DURATION | lease_duration | 15 (seconds) |
| FLEXTRAIN_OPERATOR_RENEW_DEADLINE | renew_deadline | 10 (seconds) |
| FLEXTRAIN_OPERATOR_RETRY_PERIOD | retry_period | 2 (seconds) |
| FLEXTRAIN_OPERATOR_KUEUE | kueue | false |
| FLEXTRAIN_OPERATOR_ALLOW_PLAINTEXT | allow_plaintext | true |
| FLEXTRAIN_OPERATOR_CLUSTER_DOMAIN | cluster_domain | cluster.local |
| FLEXTRAIN_OPERATOR_TLS_CERTIFICATE_DAYS | tls_certificate_days | 365 |
| FLEXTRAIN_OPERATOR_TLS_RENEW_FRACTION | tls_renew_fraction | 0.33 |
| FLEXTRAIN_OPERATOR_AGGREGATOR_HEALTH_PORT | aggregator_health_port | 50052 |
| FLEXTRAIN_OPERATOR_TLS_ISSUER_KIND | tls_issuer_kind | Issuer |
| FLEXTRAIN_OPERATOR_TLS_ISSUER_NAME | tls_issuer_name | (empty: the operator issues) |
| FLEXTRAIN_OPERATOR_TLS_ISSUER_GROUP | tls_issuer_group | cert-manager.io |
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from flextrain import __version__
from flextrain.api.quantity import parse_quantity

PREFIX: Final[str] = "FLEXTRAIN_OPERATOR_"
DNS_SUBDOMAIN: Final = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use; names the variable."""


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator needs beyond the resources it watches."""

    image: str = f"ghcr.io/flextrain/flextrain:{__version__}"
    """Default image of the aggregator and the trainers (`flextrain aggregator` /
    `flextrain trainer`); a FlexTrainJob's `spec.image` and a DeviceTier's `spec.image`
    override it, in that order."""

    image_pull_policy: PullPolicy = "IfNotPresent"
    """imagePullPolicy of every container the operator creates."""

    namespaces: tuple[str, ...] = ()
    """Namespaces whose FlexTrainJobs the operator serves; empty means cluster-wide
    (DeviceTiers and Nodes are cluster-scoped and always watched cluster-wide)."""

    status_interval: float = 10.0
    """Seconds between two readings of a running job's aggregator (GetStatus) and
    re-checks of its deadline; child and node changes are reacted to immediately."""

    status_timeout: float = 3.0
    """Deadline of one GetStatus call, in seconds; an unreachable aggregator costs at most
    this per job and interval."""

    aggregator_port: int = 50051
    """gRPC port of the aggregator container and its Service."""

    metrics_port: int = 9090
    """Prometheus port of the aggregator container and its Service (0 disables it)."""

    aggregator_address: str = "{service}.{namespace}.svc:{port}"
    """How the operator and the trainers reach a job's aggregator: a template with
    {service}, {namespace}, {job} and {port}."""

    aggregator_addresses: Mapping[str, str] = field(default_factory=dict)
    """Per-job overrides `namespace/job -> host:port` of where the *operator* reads the
    aggregator's status (trainers always use the Service). For an operator running
    outside the cluster, e.g. through port-forwards, and for tests on loopback."""

    backoff_limit_per_index: int = 3
    """Retries of one trainer replica (one completion index) before that index fails."""

    aggregator_cpu: str = "1"
    """CPU request of the aggregator container (merging and evaluation)."""

    aggregator_memory: str = "2Gi"
    """Memory request and limit of the aggregator container; it holds a few copies of
    the model, so size it to about 6x the model plus the evaluation batch."""

    restricted_pods: bool = True
    """Build pods that meet the `restricted` Pod Security Standard (non-root, no privilege
    escalation, all capabilities dropped, read-only root filesystem with an emptyDir on
    /tmp). The image must then run as a non-root numeric user."""

    events: bool = True
    """Post Kubernetes Events for transitions (depth chosen, tier missing, degraded, ...)."""

    finish_grace: float = 60.0
    """Seconds after training completes that trainers get to see it and exit 0 on their own;
    then any tier Job still running is suspended and the aggregator is scaled to 0."""

    claim_pending_after: float = 60.0
    """Seconds a job's checkpoint claim may stay unbound before the job says so
    (AggregatorReady=False, reason CheckpointClaimPending, and a Warning Event):
    provisioners take seconds; a cluster with no default StorageClass never binds it."""

    tier_debounce: float = 1.0
    """Seconds the DeviceTier status refresh waits after a node change, so a burst of node
    updates costs one recomputation."""

    checkpoint_mount_path: str = "/var/lib/flextrain/checkpoints"
    """Where the checkpoint volume is mounted in the aggregator pod."""

    data_mount_path: str = "/var/lib/flextrain/data"
    """Where the dataset volume is mounted (read-only) in trainer and aggregator pods."""

    allowed_images: tuple[str, ...] = ()
    """Tenancy policy (flextrain.operator.policy): prefixes a job's `spec.image` must
    start with, comma-separated in the variable; `*` allows any image. Empty: only the
    repository of `image` (any tag or digest)."""

    allow_service_account: bool = False
    """Tenancy policy: whether a job may set `spec.podTemplate.serviceAccountName` (and so
    run with that account's API token mounted)."""

    host_path_prefixes: tuple[str, ...] = ()
    """Tenancy policy: node directories a job's hostPath data source may lie under,
    comma-separated in the variable. Empty: hostPath data is refused."""

    aggregator_toleration_keys: tuple[str, ...] = ()
    """Tenancy policy: taint keys a job's `spec.aggregator.tolerations` may tolerate,
    comma-separated in the variable; `*` allows any toleration, the key-less one that
    tolerates every taint included. Empty: a job may not give its aggregator
    tolerations (taints keep tenants off the nodes they guard: GPU servers, the control
    plane). DeviceTiers' tolerations are set by cluster admins and not checked."""

    network_policy: bool = True
    """Give each job a NetworkPolicy: only its trainer pods and the operator reach its
    aggregator's gRPC port, only `metrics_namespaces` its metrics port."""

    self_namespace: str = ""
    """The operator's own namespace (the chart sets it): the NetworkPolicy lets pods
    there with `self_labels` reach the aggregator's gRPC port (status reads)."""

    self_labels: Mapping[str, str] = field(default_factory=dict)
    """The operator pod's labels the NetworkPolicy selects it by (`key=value,...`)."""

    metrics_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may scrape the aggregators' metrics port (e.g. Prometheus'),
    comma-separated in the variable; empty: none."""

    self_metrics_port: int = 0
    """Port of the operator's own Prometheus metrics (flextrain.operator.metrics); 0: off."""

    checkpoint_storage_class: str = ""
    """StorageClass of the checkpoint claims the operator creates; empty: the cluster's
    default StorageClass."""

    checkpoint_size: str = "1Gi"
    """Storage a checkpoint claim requests unless the job says (`spec.checkpoint.size`)."""

    disruption_budget: bool = True
    """Give each job's aggregator a PodDisruptionBudget (minAvailable 1): a node drain
    waits for it instead of evicting it mid-round."""

    default_priority_class: str = ""
    """PriorityClass of every pod a job creates whose podTemplate names none."""

    default_image_pull_secrets: tuple[str, ...] = ()
    """Pull secrets (names, comma-separated in the variable) of every pod a job creates
    whose podTemplate names none; they must exist in the job's namespace."""

    leader_election: bool = False
    """Run as one of several replicas (flextrain.operator.leader): only the holder of the
    Lease `leader_election_lease` reconciles; the others wait, send no writes, and take
    over when the Lease expires or is released. Off: this process reconciles at once
    (one replica only)."""

    leader_election_lease: str = "flextrain-operator"
    """Name of the coordination.k8s.io/v1 Lease the replicas compete for (a DNS
    subdomain); the chart names it after the release."""

    leader_election_namespace: str = ""
    """Namespace of the Lease; empty: `self_namespace`, else the namespace of the pod's
    service account."""

    lease_duration: int = 15
    """Seconds a standby waits after it last saw the Lease change before it takes over
    (whole seconds: the Lease's `leaseDurationSeconds`). The failover time after a crash
    of the leader is about this plus `retry_period`."""

    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it gives up leading and exits;
    less than `lease_duration`, so it stops before a standby can take over."""

    retry_period: float = 2.0
    """Seconds between two attempts to acquire (standby) or renew (leader) the Lease."""

    kueue: bool = False
    """Kueue integration: jobs with `spec.queueName` are admitted by Kueue as one gang (a
    Workload per job). The operator watches Kueue Workloads only when this is on, so it
    runs on clusters without Kueue's CRDs when it is off; a job with a queueName then
    waits (condition Admitted=False, reason KueueDisabled)."""

    allow_plaintext: bool = True
    """Tenancy policy: whether a job may turn TLS off (`spec.aggregator.tls.mode:
    Disabled`). TLS is the default either way; false refuses jobs that opt out."""

    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain: the aggregator's serving certificate names
    `<svc>.<ns>.svc.<domain>` besides `<svc>`, `<svc>.<ns>` and `<svc>.<ns>.svc`; empty
    leaves the fully qualified name out."""

    tls_certificate_days: float = 365.0
    """Lifetime of an aggregator's serving certificate, in days (its job's CA lives ten
    times as long). Renewed while the job runs, see `tls_renew_fraction`."""

    tls_renew_fraction: float = 0.33
    """The operator issues a new serving certificate (same CA) once less than this
    fraction of the current one's lifetime is left; the aggregator loads it at its next
    TLS handshake (docs/operator.md, "TLS")."""

    aggregator_health_port: int = 50052
    """Plaintext port of the aggregator's gRPC health service alone, for the kubelet's
    probes (they cannot speak TLS) when the job serves TLS; never carries job traffic."""

    tls_issuer_kind: str = "Issuer"
    """cert-manager: the kind of `tls_issuer_name`, Issuer (in each job's namespace) or
    ClusterIssuer."""

    tls_issuer_name: str = ""
    """cert-manager: when set, the operator creates a cert-manager Certificate per job
    (`<job>-tls`, for the aggregator's Service names) from this issuer instead of issuing
    certificates itself; the pods mount the Secret cert-manager writes (`ca.crt`,
    `tls.crt`, `tls.key`). The issuer must write `ca.crt` (a CA or self-signed issuer
    does). Empty: the operator's own per-job CA."""

    tls_issuer_group: str = "cert-manager.io"
    """cert-manager: the API group of the issuer (external issuers have their own)."""

    @property
    def cert_manager(self) -> bool:
        """Certificates come from cert-manager (`tls_issuer_name` is set)."""
        return bool(self.tls_issuer_name)

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    def address_of(self, namespace: str, job: str, service: str) -> str:
        """host:port of a job's aggregator as trainers reach it (through its Service)."""
        return self.aggregator_address.format(
            service=service, namespace=namespace, job=job, port=self.aggregator_port
        )

    def status_address_of(self, namespace: str, job: str, service: str) -> str:
        """host:port where the operator reads the aggregator's status."""
        return self.aggregator_addresses.get(f"{namespace}/{job}") or self.address_of(
            namespace, job, service
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Settings from FLEXTRAIN_OPERATOR_* variables; unset or empty ones keep defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper(), "").strip()
            if raw:
                values[f.name] = _parse(f.name, raw)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise SettingsError(
                f"{PREFIX}IMAGE_PULL_POLICY={self.image_pull_policy!r}: use Always, "
                "IfNotPresent or Never"
            )
        if self.finish_grace < 0 or self.tier_debounce < 0 or self.claim_pending_after < 0:
            raise SettingsError("finish_grace, tier_debounce and claim_pending_after must be >= 0 seconds")
        for name in ("status_interval", "status_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{PREFIX}{name.upper()} must be > 0 seconds")
        if not 0 < self.aggregator_port < 65536 or not 0 <= self.metrics_port < 65536:
            raise SettingsError("aggregator and metrics ports must be 1..65535 (metrics: 0 = off)")
        if not 0 <= self.self_metrics_port < 65536:
            raise SettingsError(f"{PREFIX}SELF_METRICS_PORT must be 0..65535 (0 = off)")
        if self.metrics_port == self.aggregator_port:
            raise SettingsError("the metrics port must differ from the aggregator port")
        if not 0 < self.aggregator_health_port < 65536 or self.aggregator_health_port in (
            self.aggregator_port,
            self.metrics_port,
        ):
            raise SettingsError(
                f"{PREFIX}AGGREGATOR_HEALTH_PORT={self.aggregator_health_port}: use 1..65535, "
                "another port than the aggregator's gRPC and metrics ports"
            )
        if not self.tls_certificate_days >= 1:
            raise SettingsError(f"{PREFIX}TLS_CERTIFICATE_DAYS={self.tls_certificate_days}: use >= 1 (days)")
        if not 0 < self.tls_renew_fraction < 1:
            raise SettingsError(
                f"{PREFIX}TLS_RENEW_FRACTION={self.tls_renew_fraction}: use a fraction between 0 and 1 "
                "(of the certificate's lifetime left when it is renewed)"
            )
        if self.tls_issuer_name and self.tls_issuer_kind not in ("Issuer", "ClusterIssuer"):
            raise SettingsError(
                f"{PREFIX}TLS_ISSUER_KIND={self.tls_issuer_kind!r}: use Issuer or ClusterIssuer"
            )
        if self.cluster_domain and not DNS_SUBDOMAIN.fullmatch(self.cluster_domain):
            raise SettingsError(f"{PREFIX}CLUSTER_DOMAIN={self.cluster_domain!r} is not a DNS domain")
        if self.backoff_limit_per_index < 0:
            raise SettingsError(f"{PREFIX}BACKOFF_LIMIT_PER_INDEX must be >= 0")
        for name in ("aggregator_cpu", "aggregator_memory", "checkpoint_size"):
            try:
                parse_quantity(getattr(self, name))
            except ValueError as exc:
                raise SettingsError(f"{PREFIX}{name.upper()}: {exc}") from None
        if self.lease_duration < 1:
            raise SettingsError(f"{PREFIX}LEASE_DURATION must be >= 1 second")
        if not 0 < self.renew_deadline < self.lease_duration:
            raise SettingsError(
                f"{PREFIX}RENEW_DEADLINE={self.renew_deadline:g} must be > 0 and less than "
                f"{PREFIX}LEASE_DURATION={self.lease_duration}"
            )
        if not 0 < self.retry_period < self.renew_deadline:
            raise SettingsError(
                f"{PREFIX}RETRY_PERIOD={self.retry_period:g} must be > 0 and less than "
                f"{PREFIX}RENEW_DEADLINE={self.renew_deadline:g}"
            )
        if not DNS_SUBDOMAIN.fullmatch(self.leader_election_lease):
            raise SettingsError(
                f"{PREFIX}LEADER_ELECTION_LEASE={self.leader_election_lease!r} is not a valid "
                "object name: lower-case letters, digits, '-' and '.', at most 253 characters"
            )
        try:
            self.address_of("ns", "job", "svc")
        except (KeyError, IndexError, ValueError) as exc:
            raise SettingsError(
                f"{PREFIX}AGGREGATOR_ADDRESS={self.aggregator_address!r}: unknown placeholder "
                f"{exc}; use {{service}}, {{namespace}}, {{job}}, {{port}}"
            ) from None


def _parse(name: str, raw: str) -> Any:
    var = PREFIX + name.upper()
    default = OperatorSettings.__dataclass_fields__[name].default
    if name == "self_labels":
        labels: dict[str, str] = {}
        for item in raw.split(","):
            key, sep, value = item.strip().partition("=")
            if not sep or not key.strip():
                raise SettingsError(f"{var}: {item!r} is not key=value")
            labels[key.strip()] = value.strip()
        return labels
    if name in (
        "namespaces",
        "allowed_images",
        "host_path_prefixes",
        "aggregator_toleration_keys",
        "metrics_namespaces",
        "default_image_pull_secrets",
    ):
        items = tuple(item.strip() for item in raw.split(",") if item.strip())
        if name == "host_path_prefixes" and (bad := [p for p in items if not p.startswith("/")]):
            raise SettingsError(f"{var}: {bad[0]!r} is not an absolute path")
        return items
    if name == "aggregator_addresses":
        pairs: dict[str, str] = {}
        for item in raw.split(","):
            key, sep, address = item.strip().partition("=")
            if not sep or "/" not in key or ":" not in address:
                raise SettingsError(f"{var}: {item!r} is not namespace/job=host:port")
            pairs[key.strip()] = address.strip()
        return pairs
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var}={raw!r}: use true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not an integer") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not a number") from None
    return raw
