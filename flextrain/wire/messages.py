"""The protocol's messages as plain Python: what the trainer and the aggregator hand
each other, free of protobuf (``flextrain.wire.serde`` converts them to and from the
generated classes). Field meanings are those of proto/flextrain/v1/aggregator.proto.

Data chunks are not here: they travel framed by hand (``flextrain.wire.frames``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from flextrain.wire.tensors import Spec


@dataclass(frozen=True)
class JoinRequest:
    job: str
    tier: str
    replica_index: int
    #: Must equal the tier's depth known to the aggregator.
    depth: int


@dataclass(frozen=True)
class ModelDescription:
    """The global model's architecture, so a trainer builds the same network."""

    family: str
    layers: int
    num_classes: int
    in_channels: int
    image_size: int
    num_blocks: int
    #: Parameter count of the full model and of the caller's prefix.
    num_parameters: int
    prefix_parameters: int
    #: The family's own shape options (a ViT's embed_dim, heads, ...); empty for ResNet.
    options: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DataAssignment:
    """The caller's share of the training data."""

    dataset: str
    #: "iid" or "dirichlet".
    scheme: str
    #: Dirichlet concentration; 0 for iid.
    alpha: float
    seed: int
    #: This trainer's shard, 0 <= shard_index < num_shards.
    shard_index: int
    num_shards: int
    #: At most this many training examples in all; 0 = all.
    limit: int


@dataclass(frozen=True)
class TrainingConfig:
    """Local training hyper-parameters."""

    local_epochs: int
    batch_size: int
    #: "sgd" or "adam".
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    distillation_beta: float
    #: "probs" or "logits".
    distillation_target: str
    #: False for the weakest tier, which has no shorter prefix to teach.
    distill: bool
    #: dtype of floating tensors in PullModel / PushUpdate.
    wire_dtype: torch.dtype
    #: Research option: tier depths below the device's own whose prefixes it also
    #: trains (:func:`flextrain.core.losses.client_loss`); empty: the paper's loss.
    anchor_depths: tuple[int, ...] = ()
    #: "none", "distill" or "ce".
    anchor_loss: str = "none"


@dataclass(frozen=True)
class Joined:
    """The answer to Join: the client's id, the round now open and what to train."""

    client_id: str
    #: The round now open (1-based); total_rounds + 1 when done.
    round: int
    total_rounds: int
    done: bool
    model: ModelDescription
    data: DataAssignment
    training: TrainingConfig


@dataclass(frozen=True)
class PullRequest:
    client_id: str
    #: Wait for this round (or later) to open ...
    min_round: int
    #: ... at most this long (the server caps it).
    wait_seconds: float


@dataclass(frozen=True)
class ModelHeader:
    """The first chunk of a PullModel stream; data chunks of `total_bytes` follow."""

    #: False: no new round opened within the wait.
    ready: bool
    #: Training is over: the trainer exits.
    done: bool
    round: int
    specs: list[Spec]
    total_bytes: int


@dataclass(frozen=True)
class UpdateHeader:
    """The first chunk of a PushUpdate stream; the tensors' bytes follow."""

    client_id: str
    round: int
    num_examples: int
    specs: list[Spec]
    train_loss: float = 0.0
    train_seconds: float = 0.0


@dataclass(frozen=True)
class PushResult:
    accepted: bool
    #: The round the update was counted in.
    round: int
    bytes_received: int
