"""FlexTrainJob: one global depth-flexible model trained by tiers of devices
(namespaced, short name `ftj`).

Each tier names a DeviceTier, a number of replicas (devices) and the depth (number of
blocks, residual or transformer) its devices train: a fixed integer or `auto` (derived from the
DeviceTier's capacity). An aggregator merges the tiers' per-layer updates each round.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import Field, WithJsonSchema, model_validator

from flextrain.api.catalog import (
    DATASETS,
    MODEL_FAMILIES,
    RESNET_LAYERS,
    ROBUST_CLIP_MULTIPLE_DEFAULT,
    ROBUST_CLIP_MULTIPLE_MAX,
    ROBUST_TRIM_FRACTION_DEFAULT,
    ROBUST_TRIM_FRACTION_LIMIT,
    VIT_LIMITS,
)
from flextrain.api.common import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Conditions,
    FieldProblem,
    ObjectMeta,
    cel,
    rules_config,
    schema_extra,
)
from flextrain.api.conditions import JobPhase
from flextrain.api.devicetier import MAX_NODE_SELECTOR, ResourceName, Resources, Toleration
from flextrain.api.kubevalues import (
    ANNOTATIONS_MAX_BYTES,
    NO_BACKSTEPS_RULE,
    AnnotationKey,
    Image,
    LabelKey,
    LabelValue,
    SubPath,
    path_problems,
)
from flextrain.api.model import ModelSpec, blocks_cel
from flextrain.api.quantity import ResourceQuantity
from flextrain.contract import env as contract_env

KIND: Final[str] = "FlexTrainJob"
PLURAL: Final[str] = "flextrainjobs"
SHORT_NAMES: Final[tuple[str, ...]] = ("ftj",)

MAX_TIERS: Final[int] = 32
MAX_REPLICAS: Final[int] = 1000
#: Tier names become part of child object names (`<job>-<tier>`), hence the short limit.
MAX_TIER_NAME: Final[int] = 40
#: Tiers of a job admitted by Kueue: its Workload holds at most 8 pod sets (Kueue's
#: limit), one per tier and one for the aggregator.
MAX_QUEUED_TIERS: Final[int] = 7
#: The Workload's pod set of the aggregator (tiers' pod sets are named like the tiers).
AGGREGATOR_POD_SET: Final[str] = "aggregator"

BUILTIN_DATASETS: Final[tuple[str, ...]] = tuple(n for n, d in DATASETS.items() if d.builtin)


class PersistentVolumeClaimSource(ApiModel):
    """A PersistentVolumeClaim in the job's namespace."""

    claim_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="claimName: name of the PersistentVolumeClaim in the job's namespace.",
    )
    sub_path: SubPath | None = Field(
        default=None,
        description="subPath: directory inside the volume to use instead of its root; a "
        "relative path without '..' elements, at most 1024 characters.",
    )


class HostPathSource(ApiModel):
    """A directory on the node (data that lives on the devices of a node pool)."""

    path: str = Field(
        min_length=1,
        max_length=4096,
        pattern=r"^/",
        description="path: absolute directory on the node holding the data; no '..' elements.",
        json_schema_extra=schema_extra(x_kubernetes_validations=[NO_BACKSTEPS_RULE]),
    )

    @model_validator(mode="after")
    def _no_backsteps(self) -> HostPathSource:
        if problems := path_problems(self.path, relative=False):
            raise FieldProblem(("path",), self.path, f"path {'; '.join(problems)}")
        return self


class DataSource(ApiModel):
    """Where the dataset files are; exactly one of path, persistentVolumeClaim, hostPath."""

    model_config = rules_config(
        cel(
            "(has(self.path) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) "
            "+ (has(self.hostPath) ? 1 : 0) == 1",
            "source needs exactly one of path, persistentVolumeClaim, hostPath",
        )
    )

    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="path: a directory the trainers can read: a local directory for "
        "`flextrain run`, or a directory inside the trainer image in a cluster.",
    )
    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None,
        description="persistentVolumeClaim: a claim mounted read-only into every trainer pod.",
    )
    host_path: HostPathSource | None = Field(
        default=None,
        description="hostPath: a node directory mounted read-only into the tier's trainer pods.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DataSource:
        given = [n for n in ("path", "persistent_volume_claim", "host_path") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "source needs exactly one of path, persistentVolumeClaim, hostPath; "
                f"got {len(given)}"
            )
        return self


class PartitionSpec(ApiModel):
    """How the training set is split over the devices (one shard per trainer replica)."""

    model_config = rules_config(
        cel(
            "self.scheme == 'dirichlet' ? has(self.alpha) : !has(self.alpha)",
            "partition.alpha is required for scheme dirichlet and not allowed for iid",
        )
    )

    scheme: Literal["iid", "dirichlet"] = Field(
        default="iid",
        description="scheme: iid (shuffled equal shards) or dirichlet (per-class shares drawn "
        "from Dirichlet(alpha): non-IID label skew).",
    )
    alpha: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="alpha: Dirichlet concentration, > 0; small (0.1) is very skewed, large "
        "(100) is near IID. Required for dirichlet only.",
    )

    @model_validator(mode="after")
    def _alpha_with_dirichlet(self) -> PartitionSpec:
        if self.scheme == "dirichlet" and self.alpha is None:
            raise ValueError("alpha is required when scheme is dirichlet (e.g. alpha: 0.5)")
        if self.scheme == "iid" and self.alpha is not None:
            raise ValueError("alpha is only allowed when scheme is dirichlet")
        return self


class DatasetSpec(ApiModel):
    """The training data."""

    model_config = rules_config(
        cel(
            "self.name in " + str(list(BUILTIN_DATASETS)) + " || has(self.source)",
            "dataset.source is required for datasets that do not ship with a package "
            "(fashion-mnist, cifar10, cifar100)",
        )
    )

    name: Literal["digits", "synthetic", "fashion-mnist", "cifar10", "cifar100"] = Field(
        description="name: the dataset: digits and synthetic ship with the software; "
        "fashion-mnist, cifar10 and cifar100 need a source.",
    )
    source: DataSource | None = Field(
        default=None,
        description="source: where the dataset files are; required unless the dataset is built in.",
    )
    partition: PartitionSpec = Field(
        default_factory=PartitionSpec,
        description="partition: how training examples are split over the trainer replicas.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="seed: seed of the partition, the holdout split and model initialisation.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="limit: use at most this many training examples (stratified), for quick "
        "runs; unset uses all.",
    )

    @model_validator(mode="after")
    def _source_when_needed(self) -> DatasetSpec:
        info = DATASETS[self.name]
        if not info.builtin and self.source is None:
            raise ValueError(f"source is required for dataset {self.name}: {info.how_to_obtain}")
        return self


class OptimizerSpec(ApiModel):
    """The optimiser every trainer uses for its local epochs."""

    name: Literal["sgd", "adam"] = Field(
        default="sgd", description="name: sgd (with momentum) or adam."
    )
    learning_rate: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="learningRate: step size, > 0 and <= 10 (paper: 0.05).",
    )
    momentum: float = Field(
        default=0.9,
        ge=0,
        lt=1,
        description="momentum: SGD momentum in [0, 1) (paper: 0.9); ignored by adam.",
    )
    weight_decay: float = Field(
        default=1e-3,
        ge=0,
        le=1,
        description="weightDecay: L2 penalty in [0, 1] (paper: 0.001).",
    )


class AnchorSpec(ApiModel):
    """Research option, off by default: deeper devices also train shallower tiers' prefixes."""

    loss: Literal["none", "distill", "ce"] = Field(
        default="none",
        description="loss: none (the paper's loss), distill (each device's output also "
        "teaches the anchor prefixes, weighted by beta) or ce (that plus cross-entropy "
        "on the device's labels at each anchor prefix). Costs one head evaluation per "
        "anchor; see docs/results.md for what each measured.",
    )
    tiers: Literal["weakest", "all"] = Field(
        default="weakest",
        description="tiers: which tier depths below a device's own are its anchors: "
        "weakest (the job's shallowest tier) or all (every tier below; the loss adds "
        "the mean of their terms).",
    )


class DistillationSpec(ApiModel):
    """Auto-distillation: each device's depth teaches the prefix one block shorter."""

    beta: float = Field(
        default=0.2,
        ge=0,
        le=100,
        description="beta: weight of the distillation term (paper: 0.2); 0 disables it.",
    )
    target: Literal["probs", "logits"] = Field(
        default="probs",
        description="target: what the squared distance compares: probs (softmax outputs; "
        "stable) or logits (the paper's literal reading; diverged at beta 0.2, lr 0.05 in "
        "our runs, see docs/results.md).",
    )
    anchor: AnchorSpec = Field(
        default_factory=AnchorSpec,
        description="anchor: research option, off by default: every deeper device also "
        "trains the prefix of the weakest tier (or of every shallower tier).",
    )


class TrainingSpec(ApiModel):
    """Rounds and local training of each device."""

    rounds: int = Field(
        default=10,
        ge=1,
        le=100000,
        description="rounds: federated rounds to run, 1 to 100000 (paper: 160).",
    )
    local_epochs: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="localEpochs: passes over its shard each device makes per round (paper: 10).",
    )
    batch_size: int = Field(
        default=64,
        ge=1,
        le=65536,
        description="batchSize: examples per mini-batch on each device (paper: 64).",
    )
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec,
        description="optimizer: optimiser and its hyper-parameters.",
    )
    distillation: DistillationSpec = Field(
        default_factory=DistillationSpec,
        description="distillation: the auto-distillation loss term.",
    )


def quorum_count(quorum: float, devices: int) -> int:
    """How many of `devices` make a quorum (at least one): the one formula for the
    aggregator's round closing and the operator's QuorumLost."""
    return max(1, math.ceil(quorum * devices - 1e-9))


class RobustMergeSpec(ApiModel):
    """Options of the robust merge (aggregation.strategy robust): per tensor, over the
    devices that sent it, each device's update (its value minus the global one) is
    clipped to clipMultiple x the median update norm, then the tensor moves by the
    coordinate-wise trimmed mean or median of the updates. Unweighted by example counts.
    The aggregator keeps every update of a round until it closes (memory: devices x
    model)."""

    model_config = rules_config(
        cel(
            "self.method == 'trimmed-mean' || !has(self.trimFraction)",
            "robust.trimFraction applies to method trimmed-mean only",
            field_path=".trimFraction",
        ),
        cel(
            "!has(self.clipMultiple) || self.clipMultiple == 0.0 || self.clipMultiple >= 1.0",
            f"robust.clipMultiple must be 0 (no clipping) or 1 to {ROBUST_CLIP_MULTIPLE_MAX:g}",
            field_path=".clipMultiple",
        ),
    )

    method: Literal["trimmed-mean", "median"] = Field(
        default="trimmed-mean",
        description="method: the coordinate-wise statistic over the devices that sent a "
        "tensor: trimmed-mean (drops the trimFraction largest and smallest values of each "
        "coordinate, averages the rest) or median.",
    )
    trim_fraction: float | None = Field(
        default=None,
        ge=0,
        lt=ROBUST_TRIM_FRACTION_LIMIT,
        description="trimFraction: share of a tensor's senders dropped from each end of "
        f"every coordinate, rounded down (0.2 of 6 devices: 1), 0 to under "
        f"{ROBUST_TRIM_FRACTION_LIMIT:g}; default {ROBUST_TRIM_FRACTION_DEFAULT:g}; only with "
        "method trimmed-mean.",
    )
    clip_multiple: float = Field(
        default=ROBUST_CLIP_MULTIPLE_DEFAULT,
        ge=0,
        le=ROBUST_CLIP_MULTIPLE_MAX,
        description="clipMultiple: a device's update of a tensor whose L2 norm exceeds this "
        "multiple of the median norm of that tensor's updates is scaled down to it; 1 to "
        f"{ROBUST_CLIP_MULTIPLE_MAX:g}, or 0 for no clipping (default "
        f"{ROBUST_CLIP_MULTIPLE_DEFAULT:g}).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RobustMergeSpec:
        if self.trim_fraction is not None and self.method != "trimmed-mean":
            raise FieldProblem(
                ("trimFraction",),
                self.trim_fraction,
                f"robust.trimFraction applies to method trimmed-mean only, not {self.method}",
            )
        if 0 < self.clip_multiple < 1:
            raise FieldProblem(
                ("clipMultiple",),
                self.clip_multiple,
                f"robust.clipMultiple must be 0 (no clipping) or 1 to "
                f"{ROBUST_CLIP_MULTIPLE_MAX:g}, got {self.clip_multiple} (below 1 it would "
                "clip the median update itself)",
            )
        return self


class AggregationSpec(ApiModel):
    """How the aggregator merges updates and closes rounds."""

    model_config = rules_config(
        cel(
            "self.strategy == 'robust' || !has(self.robust)",
            "aggregation.robust is allowed only with strategy robust",
            field_path=".robust",
        )
    )

    strategy: Literal["pad", "holder-weighted", "robust"] = Field(
        default="pad",
        description="strategy: pad (the paper's: missing deep blocks padded with the global "
        "copy, uniform mean), holder-weighted (mean over the devices that sent each tensor, "
        "weighted by their example counts) or robust (per tensor over the devices that sent "
        "it: norm clipping, then a trimmed mean or median; see robust).",
    )
    robust: RobustMergeSpec | None = Field(
        default=None,
        description="robust: options of the robust merge (method, trimFraction, "
        "clipMultiple); only with strategy robust; defaults apply when omitted.",
    )
    quorum: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="quorum: fraction of the round's expected devices, in (0, 1], whose "
        "updates let a round close when its timeout passes; late updates are then stale.",
    )
    round_timeout_seconds: int = Field(
        default=600,
        ge=1,
        le=7 * 24 * 3600,
        description="roundTimeoutSeconds: seconds after which a round closes with quorum, "
        "1 to 604800.",
    )
    evaluate_every_rounds: int = Field(
        default=1,
        ge=1,
        le=100000,
        description="evaluateEveryRounds: evaluate every tier depth on the held-out set every "
        "N rounds (and always after the last).",
    )
    compression: Literal["none", "float16", "bfloat16"] = Field(
        default="none",
        description="compression: dtype of tensors on the wire (none = float32); the "
        "aggregator always merges in float32.",
    )
    value_bound: float = Field(
        default=1000.0,
        ge=1,
        le=1e6,
        description="valueBound: the largest magnitude an update's value may have, as a "
        "multiple of the larger of 1 and the largest magnitude of the same tensor in the "
        "global model; an update beyond it is refused (out_of_bounds) and changes nothing. "
        "1 to 1000000, default 1000.",
    )

    @model_validator(mode="after")
    def _robust_with_robust_strategy(self) -> AggregationSpec:
        if self.robust is not None and self.strategy != "robust":
            raise FieldProblem(
                ("robust",),
                self.robust.to_wire(),
                f"aggregation.robust is allowed only with strategy robust, not {self.strategy} "
                "(set strategy: robust, or remove robust)",
            )
        return self


Depth = Annotated[
    Annotated[int, Field(ge=1)] | Literal["auto"],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "minimum": 1,
            "pattern": "^auto$",
        }
    ),
]


class TierSpec(ApiModel):
    """One tier of devices: a DeviceTier, how many replicas, and the depth they train."""

    name: str = Field(
        min_length=1,
        max_length=MAX_TIER_NAME,
        pattern=DNS_LABEL_PATTERN,
        description=f"name: the tier's name, unique in the job (RFC 1123 label, at most "
        f"{MAX_TIER_NAME} characters); names the tier's Job.",
    )
    device_tier_ref: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="deviceTierRef: name of the DeviceTier whose nodes run this tier.",
    )
    replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS,
        description=f"replicas: devices (trainer pods) in this tier, 1 to {MAX_REPLICAS}; each "
        "trains its own data shard.",
    )
    depth: Depth = Field(
        description="depth: blocks (residual or transformer) this tier trains, 1 to the model's block count, or "
        "auto to take the deepest prefix that fits the DeviceTier's capacity.",
    )
    data_source: DataSource | None = Field(
        default=None,
        description="dataSource: where this tier's devices find the data, overriding "
        "dataset.source (e.g. a hostPath on edge boxes).",
    )


class CheckpointSpec(ApiModel):
    """Where the aggregator keeps its checkpoints (and the final model)."""

    model_config = rules_config(
        cel(
            "!(has(self.path) && has(self.persistentVolumeClaim))",
            "checkpoint takes path or persistentVolumeClaim, not both",
        ),
        cel(
            "!(has(self.persistentVolumeClaim) && ((has(self.emptyDir) && self.emptyDir) || has(self.size)))",
            "checkpoint.persistentVolumeClaim names your own claim: emptyDir and size do not apply",
        ),
        cel(
            "!(has(self.emptyDir) && self.emptyDir && has(self.size))",
            "checkpoint.size sizes the operator's claim, which emptyDir: true does without",
        ),
    )

    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None,
        description="persistentVolumeClaim: your own claim mounted into the aggregator "
        "instead of the one the operator creates; checkpoints survive pod restarts and the "
        "final model stays there.",
    )
    empty_dir: bool = Field(
        default=False,
        description="emptyDir: true keeps checkpoints in the aggregator pod only (an "
        "emptyDir volume): a rescheduled aggregator starts training again from nothing and "
        "the final model is gone with the pod. Default false: the operator creates a claim "
        "<job>-checkpoints for the job.",
    )
    size: ResourceQuantity | None = Field(
        default=None,
        description="size: storage requested by the claim the operator creates (default: "
        "the operator's, 1Gi); two round checkpoints and one sub-model per tier, about 3x the "
        "model plus the tiers' prefixes.",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="path: checkpoint directory for `flextrain run` (default "
        "runs/<job>/checkpoints); in a cluster, a directory inside the aggregator pod.",
    )
    every_rounds: int = Field(
        default=1,
        ge=1,
        le=100000,
        description="everyRounds: write a checkpoint every N completed rounds (and after the "
        "last).",
    )

    @model_validator(mode="after")
    def _one_location(self) -> CheckpointSpec:
        if self.path is not None and self.persistent_volume_claim is not None:
            raise ValueError("checkpoint takes path or persistentVolumeClaim, not both")
        if self.persistent_volume_claim is not None and (self.empty_dir or self.size is not None):
            raise ValueError("checkpoint.persistentVolumeClaim names your own claim: emptyDir and size do not apply")
        if self.empty_dir and self.size is not None:
            raise ValueError("checkpoint.size sizes the operator's claim, which emptyDir: true does without")
        return self


class ModelLocation(ApiModel):
    """Where a finished job's model lies."""

    claim: str | None = Field(
        default=None,
        description="claim: the PersistentVolumeClaim holding it, in the job's namespace.",
    )
    checkpoint: str | None = Field(
        default=None,
        description="checkpoint: the final round's checkpoint (global model and history), "
        "pvc://<claim>/<path>.",
    )
    exports: str | None = Field(
        default=None,
        description="exports: the directory of one sub-model per tier (<tier>.safetensors "
        "and <tier>.json, loadable with flextrain.core.export.load_submodel).",
    )


class AggregatorResources(Resources):
    """Container resources of the job's aggregator."""

    requests: dict[ResourceName, ResourceQuantity] | None = Field(
        default=None,
        max_length=3,
        description="requests: resources the scheduler reserves for the aggregator (default: "
        "the operator's, 1 CPU and 2Gi); it holds a few copies of the model, so about 6x the "
        "model plus the evaluation batch of memory. Not negative.",
    )
    limits: dict[ResourceName, ResourceQuantity] | None = Field(
        default=None,
        max_length=3,
        description="limits: the most the aggregator may use (default: memory as requested); "
        "memory over the limit kills it, and it resumes from its last checkpoint. Not negative.",
    )


#: `spec.aggregator.tls.mode`: the aggregator serves TLS (the default) or plaintext gRPC.
TLS_ENABLED: Final = "Enabled"
TLS_DISABLED: Final = "Disabled"


class AggregatorTls(ApiModel):
    """Transport security between the job's trainers, the operator and the aggregator."""

    mode: Literal["Enabled", "Disabled"] = Field(
        default=TLS_ENABLED,
        description="mode: Enabled (default): the aggregator serves TLS with a certificate "
        "for its Service names from a CA of this job's own (or from cert-manager when the "
        "operator is set up so), and the trainers and the operator verify it. Disabled: "
        "plaintext gRPC (tokens and model updates readable on the network); the operator's "
        "policy may forbid it (policy.allowPlaintext). Immutable (whether set or not).",
    )


class AggregatorSpec(ApiModel):
    """Where the job's aggregator runs and what it may use."""

    node_selector: dict[LabelKey, LabelValue] | None = Field(
        default=None,
        max_length=MAX_NODE_SELECTOR,
        description="nodeSelector: node labels the aggregator's node must carry, e.g. "
        "{flextrain.dev/pool: cpu}; kubernetes.io/os: linux is always added. At most "
        f"{MAX_NODE_SELECTOR}.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        max_length=32,
        description="tolerations: taints of the aggregator's nodes that its pod tolerates; "
        "only taint keys the operator's tenancy policy allows (by default none).",
    )
    resources: AggregatorResources | None = Field(
        default=None,
        description="resources: CPU, memory and ephemeral-storage requests and limits of the "
        "aggregator container.",
    )
    tls: AggregatorTls | None = Field(
        default=None,
        description="tls: TLS of the aggregator's gRPC port; unset: TLS (mode Enabled).",
    )

    @property
    def tls_enabled(self) -> bool:
        return self.tls is None or self.tls.mode == TLS_ENABLED


#: Environment variables the operator always sets itself: a pod template may not name them.
RESERVED_ENV: Final[tuple[str, ...]] = contract_env.RESERVED
#: Label prefix the operator selects its children by: a pod template may not use it.
RESERVED_LABEL_PREFIX: Final[str] = "flextrain.dev/"
#: The most labels and annotations a pod template may add (bounds the CRD's CEL cost).
MAX_POD_LABELS: Final[int] = 64
MAX_POD_ANNOTATIONS: Final[int] = 64


class EnvVar(ApiModel):
    """An environment variable with a literal value."""

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="name: the variable's name (letters, digits, '-', '.', '_'; not starting "
        "with a digit).",
    )
    value: str = Field(default="", max_length=32768, description="value: the variable's value.")


class LocalObjectReference(ApiModel):
    """A reference to an object in the job's namespace."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="name: the object's name.",
    )


class PodTemplate(ApiModel):
    """What users add to every pod the operator creates for the job (trainers and the
    aggregator). The operator only adds its own defaults around these values and never
    overwrites them."""

    labels: dict[LabelKey, LabelValue] | None = Field(
        default=None,
        max_length=MAX_POD_LABELS,
        description=f"labels: extra pod labels, at most {MAX_POD_LABELS}: keys are label keys "
        "(keys under flextrain.dev/ are reserved), values label values (at most 63 "
        "characters).",
        json_schema_extra=schema_extra(
            x_kubernetes_validations=[
                cel(
                    f"self.all(k, !k.startsWith('{RESERVED_LABEL_PREFIX}'))",
                    f"podTemplate.labels may not use the reserved prefix {RESERVED_LABEL_PREFIX}",
                )
            ]
        ),
    )
    annotations: dict[AnnotationKey, str] | None = Field(
        default=None,
        max_length=MAX_POD_ANNOTATIONS,
        description=f"annotations: extra pod annotations, at most {MAX_POD_ANNOTATIONS}: keys "
        "are label keys in any letter case; keys and values together at most 256 KiB.",
    )
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        description="env: extra environment variables of every container; a variable named "
        "here wins over the operator's default of the same name (e.g. FLEXTRAIN_DEVICE), "
        "except the reserved " + ", ".join(RESERVED_ENV) + ".",
        json_schema_extra=schema_extra(
            x_kubernetes_list_type="map",
            x_kubernetes_list_map_keys=["name"],
            x_kubernetes_validations=[
                cel(
                    f"self.all(e, !(e.name in {list(RESERVED_ENV)}))",
                    "podTemplate.env may not set the variables the operator owns: "
                    + ", ".join(RESERVED_ENV),
                )
            ],
        ),
    )
    service_account_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="serviceAccountName: service account of the job's pods (default: the "
        "namespace's default account, with no API token mounted).",
    )
    priority_class_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="priorityClassName: PriorityClass of the job's pods.",
    )
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None,
        max_length=16,
        description="imagePullSecrets: Secrets in the job's namespace used to pull the image.",
    )

    @model_validator(mode="after")
    def _nothing_reserved(self) -> PodTemplate:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in (self.annotations or {}).items())
        if size > ANNOTATIONS_MAX_BYTES:
            raise FieldProblem(
                ("annotations",),
                f"{size} bytes",
                f"annotations take {size} bytes (keys and values), more than the "
                f"{ANNOTATIONS_MAX_BYTES} the API server allows on a pod",
            )
        for key in self.labels or {}:
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise FieldProblem(
                    ("labels", key),
                    key,
                    f"label {key!r}: the prefix {RESERVED_LABEL_PREFIX} is reserved for the "
                    "operator",
                )
        seen: set[str] = set()
        for i, var in enumerate(self.env or []):
            if var.name in RESERVED_ENV:
                raise FieldProblem(
                    ("env", i, "name"),
                    var.name,
                    f"{var.name} is set by the operator and may not be overridden",
                )
            if var.name in seen:
                raise FieldProblem(("env", i, "name"), var.name, f"{var.name} is listed twice")
            seen.add(var.name)
        return self


_TIERS_CEL = [
    cel(
        "self.all(t, self.exists_one(u, u.name == t.name))",
        "tiers[].name must be unique within the job",
    ),
]


#: CEL: the TLS mode of `obj` (a spec), Enabled when unset.
_TLS_MODE_CEL: Final[str] = (
    "(has({obj}.aggregator) && has({obj}.aggregator.tls) && has({obj}.aggregator.tls.mode) "
    "? {obj}.aggregator.tls.mode : 'Enabled')"
)


class FlexTrainJobSpec(ApiModel):
    """Desired state of a FlexTrainJob."""

    model_config = rules_config(
        cel(
            f"!has(self.queueName) || size(self.tiers) <= {MAX_QUEUED_TIERS}",
            f"a job with queueName has at most {MAX_QUEUED_TIERS} tiers: Kueue's Workload "
            f"holds at most {MAX_QUEUED_TIERS + 1} pod sets, one per tier and one for the "
            "aggregator",
            field_path=".tiers",
        ),
        cel(
            f"!has(self.queueName) || self.tiers.all(t, t.name != '{AGGREGATOR_POD_SET}')",
            f"a job with queueName may not have a tier named {AGGREGATOR_POD_SET!r}: its "
            "Workload's pod set of that name is the aggregator's",
            field_path=".tiers",
        ),
        cel(
            "has(self.queueName) == has(oldSelf.queueName)",
            "queueName is immutable: it cannot be added or removed after the job is created",
            reason="FieldValueForbidden",
        ),
        cel(
            "self.tiers.all(t, type(t.depth) == string || int(t.depth) <= "
            + blocks_cel("self.model")
            + ")",
            "tiers[].depth must not exceed the model's number of blocks (resnet: "
            "3 * (layers - 2) / 6, e.g. 9 for layers 20, 27 for layers 56; vit: layers)",
        ),
        cel(
            "self.model.family != 'vit' || !has(self.model.vit) || "
            + str({n: d.image_size for n, d in DATASETS.items()})
            + "[self.dataset.name] % self.model.vit.patchSize == 0",
            "model.vit.patchSize must divide the dataset's image size (8 for digits and "
            "synthetic, 28 for fashion-mnist, 32 for cifar10/cifar100)",
        ),
        cel(
            _TLS_MODE_CEL.format(obj="self") + " == " + _TLS_MODE_CEL.format(obj="oldSelf"),
            "aggregator.tls.mode is immutable (unset means Enabled): create a new FlexTrainJob",
            field_path=".aggregator",
        ),
    )

    model: ModelSpec = Field(
        default_factory=ModelSpec,
        description="model: the global model; immutable once created.",
        json_schema_extra=schema_extra(
            x_kubernetes_validations=[
                cel("self == oldSelf", "model is immutable: create a new FlexTrainJob")
            ]
        ),
    )
    dataset: DatasetSpec = Field(
        description="dataset: training data, source and partition over devices; immutable.",
        json_schema_extra=schema_extra(
            x_kubernetes_validations=[
                cel("self == oldSelf", "dataset is immutable: create a new FlexTrainJob")
            ]
        ),
    )
    training: TrainingSpec = Field(
        default_factory=TrainingSpec, description="training: rounds and local training."
    )
    aggregation: AggregationSpec = Field(
        default_factory=AggregationSpec,
        description="aggregation: merge strategy, quorum and round timeout.",
    )
    tiers: list[TierSpec] = Field(
        min_length=1,
        max_length=MAX_TIERS,
        description=f"tiers: the device tiers, 1 to {MAX_TIERS}, each with its DeviceTier, "
        "replicas and depth; immutable once set (a running job's trainers and checkpoints "
        "depend on them).",
        json_schema_extra=schema_extra(
            x_kubernetes_list_type="map",
            x_kubernetes_list_map_keys=["name"],
            x_kubernetes_validations=[
                *_TIERS_CEL,
                cel(
                    "self == oldSelf",
                    "tiers are immutable: delete and re-create the FlexTrainJob (or create a "
                    "new one) to change tiers",
                    reason="FieldValueForbidden",
                ),
            ],
        ),
    )
    aggregator: AggregatorSpec | None = Field(
        default=None,
        description="aggregator: the aggregator's placement (nodeSelector, tolerations) and "
        "resources; unset: any Linux node, the operator's default resources.",
    )
    checkpoint: CheckpointSpec | None = Field(
        default=None,
        description="checkpoint: where checkpoints and the final model are kept; unset keeps "
        "them in the aggregator pod only (lost if the pod is deleted).",
    )
    image: Image | None = Field(
        default=None,
        description="image: trainer and aggregator image for this job; a DeviceTier's image "
        "overrides it for its trainers; unset uses the operator's default. 1 to 512 "
        "characters, no leading or trailing whitespace.",
    )
    pod_template: PodTemplate | None = Field(
        default=None,
        description="podTemplate: labels, annotations, environment, service account, priority "
        "class and image pull secrets added to every pod of the job; never overwritten by the "
        "operator's defaults.",
    )
    queue_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="queueName: the Kueue LocalQueue (in the job's namespace) that admits the "
        "job, all its tiers and its aggregator at once or nothing (RFC 1123 subdomain, at "
        f"most 253 characters); needs the operator's Kueue integration (chart value "
        f"kueue.enabled); at most {MAX_QUEUED_TIERS} tiers and no tier named "
        f"{AGGREGATOR_POD_SET!r}; immutable. Unset: the job starts without Kueue.",
        json_schema_extra=schema_extra(
            x_kubernetes_validations=[
                cel(
                    "self == oldSelf",
                    "queueName is immutable: delete and re-create the FlexTrainJob to move "
                    "it to another queue",
                    reason="FieldValueForbidden",
                )
            ]
        ),
    )
    suspend: bool = Field(
        default=False,
        description="suspend: true stops every trainer and keeps the checkpoint; false resumes "
        "(a job may be created suspended, e.g. for Kueue).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        description="activeDeadlineSeconds: seconds after start when a still-running job is "
        "failed with reason DeadlineExceeded.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="ttlSecondsAfterFinished: seconds after Succeeded or Failed when the job "
        "(and its children) are deleted; unset keeps it.",
    )

    @model_validator(mode="after")
    def _tiers_consistent(self) -> FlexTrainJobSpec:
        seen: set[str] = set()
        blocks = self.model.num_blocks
        for i, tier in enumerate(self.tiers):
            if tier.name in seen:
                raise FieldProblem(
                    ("tiers", i, "name"),
                    tier.name,
                    f"tier name {tier.name!r} is used by another tier",
                )
            seen.add(tier.name)
            if isinstance(tier.depth, int) and not 1 <= tier.depth <= blocks:
                unit = "layers" if self.model.family == "resnet" else "transformer blocks"
                raise FieldProblem(
                    ("tiers", i, "depth"),
                    tier.depth,
                    f"depth {tier.depth} is out of range: a {self.model.family} with "
                    f"{self.model.layers} {unit} has {blocks} blocks, so depth must be 1 to "
                    f"{blocks} or auto",
                )
        self._check_patches()
        self._check_queue()
        return self

    def _check_queue(self) -> None:
        """A job Kueue admits is one Workload: a pod set per tier plus the aggregator's."""
        if self.queue_name is None:
            return
        if len(self.tiers) > MAX_QUEUED_TIERS:
            raise FieldProblem(
                ("tiers",),
                len(self.tiers),
                f"a job with queueName has at most {MAX_QUEUED_TIERS} tiers (it has "
                f"{len(self.tiers)}): Kueue's Workload holds at most {MAX_QUEUED_TIERS + 1} "
                "pod sets, one per tier and one for the aggregator",
            )
        for tier in self.tiers:
            if tier.name == AGGREGATOR_POD_SET:
                raise FieldProblem(
                    ("tiers",),
                    tier.name,
                    f"a job with queueName may not have a tier named {AGGREGATOR_POD_SET!r}: "
                    "its Workload's pod set of that name is the aggregator's",
                )

    def _check_patches(self) -> None:
        if self.model.family != "vit":
            return
        patch = self.model.options["patch_size"]
        size = DATASETS[self.dataset.name].image_size
        if size % patch:
            fits = [p for p in range(1, VIT_LIMITS["patch_size"].high + 1) if size % p == 0]
            raise FieldProblem(
                ("model", "vit", "patchSize"),
                patch,
                f"patchSize {patch} does not divide the {self.dataset.name} images' size "
                f"{size}; allowed here: {', '.join(map(str, fits))}",
            )


class TierStatus(ApiModel):
    """Observed state of one tier."""

    name: str = Field(description="name: the tier's name.")
    depth: int | None = Field(
        default=None, ge=1, description="depth: the depth in use (resolved when auto)."
    )
    depth_source: Literal["fixed", "auto"] | None = Field(
        default=None, description="depthSource: fixed (from the spec) or auto (from capacity)."
    )
    replicas: int = Field(default=0, ge=0, description="replicas: trainer pods wanted.")
    ready: int = Field(default=0, ge=0, description="ready: trainer pods running and ready.")
    failed: int = Field(default=0, ge=0, description="failed: trainer pods that failed.")
    last_round_pushed: int | None = Field(
        default=None,
        ge=0,
        description="lastRoundPushed: the latest round for which the tier's updates reached the "
        "aggregator.",
    )


class DepthAccuracy(ApiModel):
    """Held-out accuracy of the global model's prefix of one depth."""

    depth: int = Field(ge=1, description="depth: prefix depth evaluated (blocks).")
    accuracy: float = Field(
        ge=0, le=1, description="accuracy: fraction of held-out examples classified right."
    )
    round: int = Field(ge=0, description="round: the round after which it was measured.")


class FlexTrainJobStatus(ApiModel):
    """Observed state of a FlexTrainJob, written by the operator."""

    phase: JobPhase | None = Field(
        default=None,
        description="phase: Pending, Running, Degraded, Suspended, Succeeded or Failed.",
    )
    round: int | None = Field(default=None, ge=0, description="round: rounds completed so far.")
    total_rounds: int | None = Field(
        default=None, ge=1, description="totalRounds: rounds the job will run."
    )
    tiers_ready: str | None = Field(
        default=None,
        description="tiersReady: tiers with all replicas ready, as ready/total (e.g. 2/3).",
    )
    best_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="bestAccuracy: the highest accuracy over depths in the latest evaluation.",
    )
    accuracy: list[DepthAccuracy] | None = Field(
        default=None,
        max_length=MAX_TIERS,
        description="accuracy: the latest held-out accuracy per tier depth.",
    )
    accuracy_by_depth: str | None = Field(
        default=None,
        max_length=512,
        description="accuracyByDepth: the latest accuracy per depth as one line for "
        "`kubectl get ftj` (e.g. `d3=0.975 d9=0.964`).",
    )
    tiers: list[TierStatus] | None = Field(
        default=None, max_length=MAX_TIERS, description="tiers: per-tier state."
    )
    conditions: Conditions | None = Field(
        default=None,
        description="conditions: TiersAvailable, AggregatorReady, Progressing, Degraded, "
        "Suspended, Complete, Failed, and Admitted (jobs with queueName), with reasons.",
    )
    start_time: datetime | None = Field(
        default=None, description="startTime: when training started."
    )
    completion_time: datetime | None = Field(
        default=None, description="completionTime: when the job succeeded or failed."
    )
    model_location: str | None = Field(
        default=None,
        description="modelLocation: where the final model is (checkpoint volume and path).",
    )
    model: ModelLocation | None = Field(
        default=None,
        description="model: where the trained model and the per-tier sub-models are, once "
        "the job succeeded (docs/operator.md says how to fetch them).",
    )
    aggregator_endpoint: str | None = Field(
        default=None, description="aggregatorEndpoint: host:port of the aggregator's gRPC service."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration: the spec generation last observed."
    )


class FlexTrainJob(ApiModel):
    """A federated FlexTrain training job over tiers of devices."""

    api_version: Literal["flextrain.dev/v1alpha1"] = Field(
        default="flextrain.dev/v1alpha1", description="apiVersion: flextrain.dev/v1alpha1."
    )
    kind: Literal["FlexTrainJob"] = Field(default="FlexTrainJob", description="kind: FlexTrainJob.")
    metadata: ObjectMeta
    spec: FlexTrainJobSpec
    status: FlexTrainJobStatus | None = None

    @property
    def num_classes(self) -> int:
        """Classes of the head: the spec's numClasses or the dataset's."""
        return self.spec.model.num_classes or DATASETS[self.spec.dataset.name].num_classes


__all__ = [
    "KIND",
    "MODEL_FAMILIES",
    "RESNET_LAYERS",
    "AggregationSpec",
    "CheckpointSpec",
    "DataSource",
    "DatasetSpec",
    "FlexTrainJob",
    "FlexTrainJobSpec",
    "FlexTrainJobStatus",
    "ModelSpec",
    "PodTemplate",
    "RobustMergeSpec",
    "TierSpec",
]
