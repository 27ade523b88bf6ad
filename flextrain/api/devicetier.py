"""DeviceTier: one hardware class of the cluster (cluster-scoped, short name `dt`).

A DeviceTier says where trainers of that class run (node selector, tolerations,
architecture), what they may use (resources, accelerator) and how much model they can
hold (capacity), from which `depth: auto` is derived.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from flextrain.api.common import ApiModel, Conditions, FieldProblem, ObjectMeta, cel, rules_config
from flextrain.api.kubevalues import Image, LabelKey, LabelValue, TolerationKey
from flextrain.api.quantity import Quantity, ResourceQuantity, parse_quantity

KIND: Final[str] = "DeviceTier"
PLURAL: Final[str] = "devicetiers"
SHORT_NAMES: Final[tuple[str, ...]] = ("dt",)

GPU_RESOURCE: Final[str] = "nvidia.com/gpu"
#: Why a GPU tier must be amd64: the one CUDA image FlexTrain builds (trainer_image/,
#: VARIANT=cuda) is linux/amd64; the linux/arm64 trainer image is CPU-only on purpose (the
#: ARM edge boxes must not carry a 3 GB CUDA stack), so an arm64 GPU tier would either
#: fail to pull its image or train on the CPU while holding GPUs. Said by the model, the
#: CRD's CEL rule and so by `flextrain validate`, the API server and the operator alike.
ARM64_GPU_MESSAGE: Final[str] = (
    "accelerator.type nvidia.com/gpu is not supported with architecture arm64: FlexTrain's "
    "CUDA trainer image is built for linux/amd64 only and its arm64 image is CPU-only; run "
    "GPU trainers on an amd64 GPU node pool (architecture: amd64), or set accelerator.type "
    "none to run this ARM tier on its CPUs with the arm64 CPU image"
)
#: The most nodeSelector labels a DeviceTier may name (bounds the CRD's CEL cost).
MAX_NODE_SELECTOR: Final[int] = 64


class Toleration(ApiModel):
    """A pod toleration, as in the Kubernetes core API, with the API server's rules
    (ValidateTolerations): an empty key needs operator Exists, Exists takes no value,
    tolerationSeconds only goes with effect NoExecute."""

    model_config = rules_config(
        cel(
            "(has(self.key) && size(self.key) > 0) || self.operator == 'Exists'",
            "operator must be Exists when key is empty (an empty key with Exists tolerates "
            "every taint)",
            field_path=".operator",
        ),
        cel(
            "self.operator != 'Exists' || !has(self.value) || size(self.value) == 0",
            "value must be empty when operator is Exists (Exists matches any value)",
            field_path=".value",
        ),
        cel(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "effect must be NoExecute when tolerationSeconds is set",
            field_path=".effect",
        ),
    )

    key: TolerationKey | None = Field(
        default=None,
        description="key: the taint key the toleration applies to, a label key (optional DNS "
        "subdomain prefix and '/', then a name of at most 63 characters); empty with "
        "operator Exists matches every taint.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal",
        description="operator: Equal (key and value must match) or Exists (any value; then "
        "value must be empty).",
    )
    value: LabelValue | None = Field(
        default=None,
        description="value: the taint value to match when operator is Equal; a label value "
        "(at most 63 characters).",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None,
        description="effect: the taint effect to tolerate (NoSchedule, PreferNoSchedule, "
        "NoExecute); empty tolerates all effects.",
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="tolerationSeconds: for NoExecute, seconds the pod stays bound after the "
        "taint appears; unset means forever. Only with effect NoExecute.",
    )

    @model_validator(mode="after")
    def _as_the_api_server_wants(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise FieldProblem(
                ("operator",),
                self.operator,
                "operator must be Exists when key is empty (an empty key with Exists "
                "tolerates every taint); set a key or use operator Exists",
            )
        if self.operator == "Exists" and self.value:
            raise FieldProblem(
                ("value",),
                self.value,
                "value must be empty when operator is Exists (Exists matches any value); "
                "remove the value or use operator Equal",
            )
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise FieldProblem(
                ("effect",),
                self.effect,
                "effect must be NoExecute when tolerationSeconds is set (it says how long "
                "a pod stays after a NoExecute taint appears)",
            )
        return self


ResourceName = Literal["cpu", "memory", "ephemeral-storage"]


class Resources(ApiModel):
    """Container resources of the tier's trainer pods (accelerators are set separately)."""

    requests: dict[ResourceName, ResourceQuantity] | None = Field(
        default=None,
        max_length=3,
        description="requests: resources the scheduler reserves per trainer pod "
        "(cpu in cores or millicores, memory and ephemeral-storage in bytes with suffixes); "
        "not negative.",
    )
    limits: dict[ResourceName, ResourceQuantity] | None = Field(
        default=None,
        max_length=3,
        description="limits: the most a trainer pod may use; memory over the limit kills the "
        "pod; not negative.",
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for name, request in (self.requests or {}).items():
            limit = (self.limits or {}).get(name)
            if limit is not None and parse_quantity(limit) < parse_quantity(request):
                raise FieldProblem(
                    ("limits", name),
                    limit,
                    f"limits.{name} must be greater than or equal to requests.{name} ({request})",
                )
        return self


class Accelerator(ApiModel):
    """The accelerator each trainer pod of the tier gets."""

    model_config = rules_config(
        cel(
            "self.type == 'none' ? (!has(self.count) || self.count == 0) "
            ": (has(self.count) && self.count >= 1)",
            "accelerator.count must be at least 1 for nvidia.com/gpu and 0 or unset for none",
        )
    )

    type: Literal["none", "nvidia.com/gpu"] = Field(
        default="none",
        description="type: none (CPU only) or nvidia.com/gpu (NVIDIA GPUs through the device "
        "plugin's extended resource).",
    )
    count: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="count: GPUs per trainer pod, 1 to 16 for nvidia.com/gpu; 0 or unset for none.",
    )

    @model_validator(mode="after")
    def _count_matches_type(self) -> Accelerator:
        if self.type == "none" and self.count:
            raise ValueError("count must be 0 or unset when type is none")
        if self.type != "none" and not self.count:
            raise ValueError(f"count must be at least 1 when type is {self.type}")
        return self


class Capacity(ApiModel):
    """How much model one device of the tier can train; `depth: auto` picks the deepest
    prefix that fits every budget given."""

    model_config = rules_config(
        cel(
            "has(self.memory) || has(self.parameters)",
            "capacity needs memory, parameters or both",
        )
    )

    memory: Quantity | None = Field(
        default=None,
        description="memory: bytes available for training one prefix (weights, gradients, "
        "optimizer state and activations at the job's batch size), e.g. 512Mi.",
    )
    parameters: int | None = Field(
        default=None,
        ge=1,
        description="parameters: the most model parameters a device of this tier may hold.",
    )

    @model_validator(mode="after")
    def _some_budget(self) -> Capacity:
        if self.memory is None and self.parameters is None:
            raise ValueError("capacity needs memory, parameters or both")
        if self.memory is not None and parse_quantity(self.memory) <= 0:
            raise ValueError(f"memory must be positive, got {self.memory}")
        return self


class DeviceTierSpec(ApiModel):
    """Desired state of a DeviceTier."""

    model_config = rules_config(
        cel(
            "!has(self.architecture) || self.architecture != 'arm64' || !has(self.accelerator)"
            " || !has(self.accelerator.type) || self.accelerator.type != 'nvidia.com/gpu'",
            ARM64_GPU_MESSAGE,
            field_path=".accelerator.type",
        )
    )

    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=MAX_NODE_SELECTOR,
        description="nodeSelector: node labels a node must carry to run this tier's trainers, "
        "e.g. {nvidia.com/gpu.present: 'true'}; at most "
        f"{MAX_NODE_SELECTOR}, keys are label keys and values label values (at most 63 "
        "characters). kubernetes.io/arch is added from architecture.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="tolerations: taints of the tier's nodes that its trainer pods tolerate.",
    )
    architecture: Literal["amd64", "arm64"] = Field(
        default="amd64",
        description="architecture: CPU architecture of the tier's nodes (amd64 or arm64); "
        "sets the kubernetes.io/arch node label, which picks that half of the multi-arch "
        "CPU image. GPU tiers must be amd64 (the CUDA image is linux/amd64 only).",
    )
    accelerator: Accelerator = Field(
        default_factory=Accelerator,
        description="accelerator: GPUs per trainer pod; type none for CPU-only tiers. "
        "nvidia.com/gpu needs architecture amd64.",
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="resources: CPU, memory and ephemeral-storage requests and limits of each "
        "trainer pod.",
    )
    image: Image | None = Field(
        default=None,
        description="image: trainer image for this tier, overriding the job's and the "
        "operator's default (e.g. a CUDA variant for GPU tiers); 1 to 512 characters, no "
        "leading or trailing whitespace.",
    )
    capacity: Capacity | None = Field(
        default=None,
        description="capacity: the budget of one device of this tier; required when a job "
        "uses depth: auto on this tier.",
    )

    @model_validator(mode="after")
    def _gpu_tiers_are_amd64(self) -> DeviceTierSpec:
        if self.architecture == "arm64" and self.accelerator.type == GPU_RESOURCE:
            raise FieldProblem(("accelerator", "type"), self.accelerator.type, ARM64_GPU_MESSAGE)
        return self


class DeviceTierStatus(ApiModel):
    """Observed state of a DeviceTier, written by the operator."""

    nodes: int | None = Field(
        default=None, ge=0, description="nodes: nodes matching the tier's selector."
    )
    ready_nodes: int | None = Field(
        default=None, ge=0, description="readyNodes: matching nodes whose Ready condition is True."
    )
    allocatable_cpu: str | None = Field(
        default=None,
        description="allocatableCpu: total allocatable CPU of the ready matching nodes (cores).",
    )
    allocatable_memory: str | None = Field(
        default=None,
        description="allocatableMemory: total allocatable memory of the ready matching nodes.",
    )
    allocatable_gpus: int | None = Field(
        default=None,
        ge=0,
        description="allocatableGpus: total allocatable nvidia.com/gpu of the ready matching nodes.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="observedGeneration: the spec generation last observed."
    )
    conditions: Conditions | None = Field(
        default=None, description="conditions: NodesAvailable, with a reason."
    )


class DeviceTier(ApiModel):
    """A hardware class of the cluster that FlexTrainJob tiers reference by name."""

    api_version: Literal["flextrain.dev/v1alpha1"] = Field(
        default="flextrain.dev/v1alpha1", description="apiVersion: flextrain.dev/v1alpha1."
    )
    kind: Literal["DeviceTier"] = Field(default="DeviceTier", description="kind: DeviceTier.")
    metadata: ObjectMeta
    spec: DeviceTierSpec
    status: DeviceTierStatus | None = None


DeviceTierName = Annotated[str, Field(min_length=1, max_length=253)]
