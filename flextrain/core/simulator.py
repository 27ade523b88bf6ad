"""In-process federated simulation of FlexTrain and its baselines (no network).

Runs federated FlexTrain (arXiv 2310.20457, Algorithm 2), FedSmall or FedClass with the
same building blocks a real deployment uses: :func:`~flextrain.core.federated.client_update`
on each device and a streaming merge accumulator per shared model (each update is folded
as soon as it is produced). Devices of a round train one after another from the same
round-start global state, which is what parallel devices would see.

Measured per round: accuracy on the held-out set per tier (each tier's devices are
evaluated at their evaluation depth, with their group's model), the mean device
accuracy (tiers weighted by device count), bytes uploaded and downloaded per tier
(``numel * element_size`` of the tensors, BatchNorm buffers included), the mean client
loss per tier and wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from flextrain.core.baselines import DevicePlan, plan_devices
from flextrain.core.centralised import evaluate
from flextrain.core.federated import client_update
from flextrain.core.losses import (
    ANCHOR_LOSSES,
    ANCHOR_TIERS,
    DEFAULT_BETA,
    DEFAULT_DISTILL_TARGET,
    anchor_depths,
)
from flextrain.core.merge import DEFAULT_STRATEGY, MergeStrategy, get_strategy
from flextrain.core.models import ModelSpec
from flextrain.core.optim import OptimizerConfig
from flextrain.core.partition import extract_prefix, tensor_bytes


@dataclass
class RoundRecord:
    """What one federated round did. Dict keys are tier depths."""

    #: Round number, 1-based.
    round: int
    #: Test accuracy (0..1) of each tier's devices; empty when the round was not evaluated.
    accuracy: dict[int, float]
    #: Accuracy averaged over devices (tiers weighted by device count); None when not evaluated.
    mean_device_accuracy: float | None
    #: Bytes uploaded by all devices of the tier this round.
    bytes_up: dict[int, int]
    #: Bytes downloaded by all devices of the tier this round.
    bytes_down: dict[int, int]
    #: Mean of the tier's devices' training losses.
    train_loss: dict[int, float]
    #: Seconds spent training and merging (evaluation excluded).
    train_s: float
    #: Seconds spent evaluating (0 when not evaluated).
    eval_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (string keys)."""
        return {
            "round": self.round,
            "accuracy": {str(k): v for k, v in self.accuracy.items()},
            "mean_device_accuracy": self.mean_device_accuracy,
            "bytes_up": {str(k): v for k, v in self.bytes_up.items()},
            "bytes_down": {str(k): v for k, v in self.bytes_down.items()},
            "train_loss": {str(k): v for k, v in self.train_loss.items()},
            "train_s": self.train_s,
            "eval_s": self.eval_s,
        }


@dataclass
class SimulationResult:
    """Outcome of :func:`simulate`."""

    method: str
    strategy: str
    tiers: list[tuple[int, int]]
    #: One record per round.
    rounds: list[RoundRecord]
    #: Bytes of the full model's state dict (for shares of ``bytes_up``).
    full_model_bytes: int
    #: Final global state per group (one group except for ``fedclass``: one per tier).
    final_states: dict[int, dict[str, Tensor]] = field(repr=False)
    #: Total wall time in seconds.
    wall_s: float = 0.0

    @property
    def final_accuracy(self) -> dict[int, float]:
        """Per-tier accuracy of the last evaluated round."""
        for record in reversed(self.rounds):
            if record.accuracy:
                return dict(record.accuracy)
        return {}

    @property
    def final_mean_device_accuracy(self) -> float | None:
        """Mean device accuracy of the last evaluated round."""
        for record in reversed(self.rounds):
            if record.mean_device_accuracy is not None:
                return record.mean_device_accuracy
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        return {
            "method": self.method,
            "strategy": self.strategy,
            "tiers": [list(t) for t in self.tiers],
            "full_model_bytes": self.full_model_bytes,
            "wall_s": self.wall_s,
            "final_accuracy": {str(k): v for k, v in self.final_accuracy.items()},
            "final_mean_device_accuracy": self.final_mean_device_accuracy,
            "rounds": [r.to_dict() for r in self.rounds],
        }


#: ``progress(record)``: called after every round.
RoundProgressFn = Callable[[RoundRecord], None]


def iid_split(num_examples: int, num_devices: int, seed: int = 0) -> list[np.ndarray]:
    """Equal-size IID partition: a seeded permutation cut into ``num_devices`` parts.

    Part sizes differ by at most one. Raises ValueError if a device would get nothing.
    """
    if num_devices < 1 or num_examples < num_devices:
        raise ValueError(f"cannot split {num_examples} examples over {num_devices} devices")
    perm = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(perm, num_devices)]


def _check_partitions(partitions: Sequence[Sequence[int] | np.ndarray], n: int, j: int) -> None:
    if len(partitions) != j:
        raise ValueError(f"got {len(partitions)} partitions for {j} devices")
    for d, part in enumerate(partitions):
        idx = np.asarray(part)
        if idx.size == 0:
            raise ValueError(f"device {d} has no training examples")
        if idx.min() < 0 or idx.max() >= n:
            raise ValueError(f"device {d} has indices outside [0, {n})")


def _group_accuracy(
    spec: ModelSpec,
    states: dict[int, dict[str, Tensor]],
    plans: list[DevicePlan],
    loader: DataLoader[Any],
    device: str | torch.device,
) -> dict[int, float]:
    """Accuracy per tier depth: each group's model evaluated at its members' depths."""
    accuracy: dict[int, float] = {}
    model = spec.build()
    for group, state in states.items():
        members = [p for p in plans if p.group == group]
        model.load_state_dict(state)
        model.to(device)
        by_depth = evaluate(model, loader, {p.eval_depth for p in members}, device)
        for p in members:
            accuracy[p.tier_depth] = by_depth[p.eval_depth]
    return accuracy


def simulate(
    model_spec: ModelSpec,
    train_dataset: Dataset[Any],
    test_dataset: Dataset[Any],
    tiers: Sequence[tuple[int, int]],
    rounds: int,
    local_epochs: int,
    batch_size: int,
    *,
    strategy: str | MergeStrategy = DEFAULT_STRATEGY,
    method: str = "flextrain",
    partitions: Sequence[Sequence[int] | np.ndarray] | None = None,
    beta: float = DEFAULT_BETA,
    distill_target: str = DEFAULT_DISTILL_TARGET,
    optimizer: OptimizerConfig | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    eval_every: int = 1,
    eval_batch_size: int = 256,
    progress: RoundProgressFn | None = None,
    max_steps_per_epoch: int | None = None,
    anchor_loss: str = "none",
    anchor_tiers: str = "weakest",
) -> SimulationResult:
    """Simulate ``rounds`` federated rounds over ``tiers`` and measure every round.

    Args:
        model_spec: the global model.
        train_dataset: yields ``(x (C, H, W), y)``; devices train on subsets of it.
        test_dataset: held-out set every device is evaluated on.
        tiers: ``[(depth, device_count), ...]`` with distinct depths in ``1..K``;
            devices are numbered in this order.
        rounds: communication rounds (paper: 160).
        local_epochs: local epochs per round (paper: 10).
        batch_size: client mini-batch size (paper: 64).
        strategy: ``"pad"`` (paper), ``"holder-weighted"``, ``"robust"`` (its defaults),
            or a configured strategy (``RobustMerge(method="median")``,
            ``strategy_for(job.spec.aggregation)``).
        method: ``"flextrain"``, ``"fedsmall"`` or ``"fedclass"``.
        partitions: one index array per device into ``train_dataset`` (e.g. from the
            data package's IID or Dirichlet partitioners); default :func:`iid_split`.
        beta: distillation weight for FlexTrain (paper 0.2; 0 disables).
        distill_target: ``"probs"`` (default) or ``"logits"`` (see
            :mod:`flextrain.core.losses`).
        optimizer: client optimiser; default the paper's SGD.
        seed: seeds model initialisation, the default split and client shuffling.
        device: where clients train and models are evaluated.
        eval_every: evaluate after every ``eval_every``-th round and after the last.
        eval_batch_size: batch size of evaluation.
        progress: called with each :class:`RoundRecord`.
        max_steps_per_epoch: cap on client steps per local epoch (``--dry-run``: 1).
        anchor_loss: research option for ``method="flextrain"``, off (``"none"``) by
            default: every deeper device also trains the weakest tier's prefix
            (``"distill"`` or ``"ce"``, :func:`flextrain.core.losses.client_loss`).
        anchor_tiers: with ``anchor_loss``, ``"weakest"`` (the weakest tier's depth)
            or ``"all"`` (every tier depth below the device's own).
    """
    for name, value in (
        ("rounds", rounds),
        ("local_epochs", local_epochs),
        ("batch_size", batch_size),
        ("eval_every", eval_every),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if anchor_loss not in ANCHOR_LOSSES:
        raise ValueError(f"anchor_loss must be one of {list(ANCHOR_LOSSES)}, got {anchor_loss!r}")
    if anchor_tiers not in ANCHOR_TIERS:
        raise ValueError(f"anchor_tiers must be one of {list(ANCHOR_TIERS)}, got {anchor_tiers!r}")
    if anchor_loss != "none" and method != "flextrain":
        raise ValueError(f"anchor_loss {anchor_loss!r} applies to method 'flextrain' only")
    plans = plan_devices(method, tiers)
    for depth, _ in tiers:
        if depth > model_spec.num_blocks:
            raise ValueError(f"tier depth {depth} exceeds K = {model_spec.num_blocks}")
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    n_train = len(train_dataset)  # type: ignore[arg-type]
    parts = list(partitions) if partitions is not None else iid_split(n_train, len(plans), seed)
    _check_partitions(parts, n_train, len(plans))
    subsets = [Subset(train_dataset, np.asarray(p).tolist()) for p in parts]
    test_loader: DataLoader[Any] = DataLoader(test_dataset, batch_size=eval_batch_size)

    torch.manual_seed(seed)
    initial = {k: v.detach().clone() for k, v in model_spec.build().state_dict().items()}
    full_model_bytes = tensor_bytes(initial)
    states: dict[int, dict[str, Tensor]] = {
        g: {k: v.clone() for k, v in initial.items()} for g in sorted({p.group for p in plans})
    }
    tier_depths = [d for d, _ in tiers]
    records: list[RoundRecord] = []
    start = time.perf_counter()
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        bytes_up = dict.fromkeys(tier_depths, 0)
        bytes_down = dict.fromkeys(tier_depths, 0)
        losses: dict[int, list[float]] = {d: [] for d in tier_depths}
        for group in states:
            members = [p for p in plans if p.group == group]
            acc = strat.begin(states[group], expected_clients=len(members))
            for p in members:
                sent = extract_prefix(states[group], None, p.train_depth)
                loader: DataLoader[Any] = DataLoader(
                    subsets[p.device],
                    batch_size=batch_size,
                    shuffle=True,
                    generator=torch.Generator().manual_seed(
                        (seed * 1_000_003 + r * 7919 + p.device) % (2**63)
                    ),
                )
                result = client_update(
                    sent,
                    model_spec,
                    p.train_depth,
                    loader,
                    local_epochs,
                    optimizer,
                    beta,
                    p.distill,
                    device,
                    distill_target=distill_target,
                    max_steps_per_epoch=max_steps_per_epoch,
                    anchor_depths=anchor_depths(tier_depths, p.train_depth, anchor_tiers),
                    anchor_loss=anchor_loss,
                )
                acc.add(result.tensors, result.num_examples)
                bytes_down[p.tier_depth] += tensor_bytes(sent)
                bytes_up[p.tier_depth] += tensor_bytes(result.tensors)
                losses[p.tier_depth].append(result.train_loss)
            states[group] = acc.finish()
        train_s = time.perf_counter() - t0

        accuracy: dict[int, float] = {}
        mean_acc: float | None = None
        eval_s = 0.0
        if r % eval_every == 0 or r == rounds:
            t1 = time.perf_counter()
            accuracy = _group_accuracy(model_spec, states, plans, test_loader, device)
            mean_acc = sum(accuracy[p.tier_depth] for p in plans) / len(plans)
            eval_s = time.perf_counter() - t1
        record = RoundRecord(
            round=r,
            accuracy=accuracy,
            mean_device_accuracy=mean_acc,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            train_loss={d: float(np.mean(v)) for d, v in losses.items()},
            train_s=train_s,
            eval_s=eval_s,
        )
        records.append(record)
        if progress is not None:
            progress(record)
    return SimulationResult(
        method=method,
        strategy=strat.name,
        tiers=[(int(d), int(c)) for d, c in tiers],
        rounds=records,
        full_model_bytes=full_model_bytes,
        final_states=states,
        wall_s=time.perf_counter() - start,
    )
