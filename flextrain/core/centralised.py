"""Centralised FlexTrain (arXiv 2310.20457, Algorithm 1) and its two baselines.

Per mini-batch a depth k is drawn from a distribution pi over depths; the prefix of
depth k (stem + blocks 1..k + head) is run and only it is updated, with the
auto-distillation term of :func:`flextrain.core.losses.centralised_loss`. The paper's
pi for ResNet-56 puts 0.5 on the full model and 0.25 each on prefixes with ~35 % and
~15 % of the parameters (:meth:`DepthSampler.paper_default`).

Baselines of the paper's Table 1: *Independent* (one model per depth, each the depth-k
sub-model trained on its own) and *Single* (the full model, evaluated truncated).
Stochastic depth (the paper's extra regulariser) is not implemented.

Inactive blocks do not move: gradients are cleared with ``set_to_none=True`` and
PyTorch's optimisers skip parameters whose gradient is None, so neither weight decay
nor momentum touches them. With distillation the teacher's one extra block runs in
training mode (its BatchNorm running statistics see the batch) but gets no gradient.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from flextrain.core.arch import ArchProfile, closest_depth_to_parameter_share
from flextrain.core.flexmodel import FlexModel
from flextrain.core.losses import (
    DEFAULT_BETA,
    DEFAULT_DISTILL_TARGET,
    TrainingDiverged,
    centralised_loss,
)
from flextrain.core.models import ModelSpec
from flextrain.core.optim import PAPER_SGD, OptimizerConfig, make_optimizer

#: ``progress(epoch, record)``: called after every epoch with that epoch's record.
ProgressFn = Callable[[int, dict[str, Any]], None]
Batches = DataLoader[Any] | Iterable[tuple[Tensor, Tensor]]


class DepthSampler:
    """Draws one depth per mini-batch from a fixed distribution pi (seeded)."""

    def __init__(self, pi: Mapping[int, float], seed: int = 0) -> None:
        """``pi`` maps depth (>= 1) to probability; probabilities are normalised."""
        if not pi:
            raise ValueError("pi needs at least one depth")
        depths = sorted(pi)
        probs = np.array([float(pi[d]) for d in depths], dtype=np.float64)
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths):
            raise ValueError(f"depths must be ints >= 1, got {depths}")
        if (probs < 0).any() or not np.isfinite(probs).all() or probs.sum() <= 0:
            raise ValueError(f"probabilities must be finite, >= 0 and not all 0, got {probs}")
        self.depths: tuple[int, ...] = tuple(depths)
        self.probs: tuple[float, ...] = tuple(float(p) for p in probs / probs.sum())
        self._rng = np.random.default_rng(seed)

    @classmethod
    def paper_default(cls, arch: ArchProfile, seed: int = 0) -> DepthSampler:
        """The paper's pi: full model 0.5, ~35 %-parameter prefix 0.25, ~15 % prefix 0.25.

        For ResNet-56/100 classes this is {14: 0.25, 19: 0.25, 27: 0.5}. On small models
        where two of these depths coincide their probabilities add up.
        """
        pi: dict[int, float] = {}
        for share, p in ((0.15, 0.25), (0.35, 0.25), (1.0, 0.5)):
            k = closest_depth_to_parameter_share(arch, share)
            pi[k] = pi.get(k, 0.0) + p
        return cls(pi, seed)

    def sample(self) -> int:
        """One depth drawn from pi."""
        return int(self._rng.choice(self.depths, p=self.probs))

    @property
    def max_depth(self) -> int:
        """The deepest depth pi can draw."""
        return self.depths[-1]


@torch.no_grad()
def evaluate(
    model: FlexModel,
    loader: Batches,
    depths: Iterable[int],
    device: str | torch.device = "cpu",
) -> dict[int, float]:
    """Top-1 accuracy (0..1) of the model truncated at each depth, ``{depth: accuracy}``.

    All depths share one pass through the trunk per batch. Runs in eval mode (BatchNorm
    running statistics) and restores the model's previous mode afterwards.
    """
    wanted = sorted(set(depths))
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(wanted, 0)
    total = 0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)  # (B, C, H, W), (B,)
            logits = model.forward_multi(x, wanted)
            for d, z in logits.items():
                correct[d] += int((z.argmax(dim=1) == y).sum().item())
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluation loader yielded no examples")
    return {d: correct[d] / total for d in wanted}


@dataclass
class _Meter:
    loss: Tensor | None = None
    ce: Tensor | None = None
    distill: Tensor | None = None
    correct: int = 0
    seen: int = 0
    steps: int = 0
    depth_counts: dict[int, int] = field(default_factory=dict)

    def add(
        self, total: Tensor, ce: Tensor, distill: Tensor, correct: Tensor, n: int, k: int
    ) -> None:
        t, c, d = total.detach(), ce, distill
        self.loss = t if self.loss is None else self.loss + t
        self.ce = c if self.ce is None else self.ce + c
        self.distill = d if self.distill is None else self.distill + d
        self.correct += int(correct.item())
        self.seen += n
        self.steps += 1
        self.depth_counts[k] = self.depth_counts.get(k, 0) + 1

    def record(self) -> dict[str, Any]:
        steps = max(self.steps, 1)
        return {
            "loss": (self.loss.item() / steps) if self.loss is not None else float("nan"),
            "ce": (self.ce.item() / steps) if self.ce is not None else float("nan"),
            "distill": (self.distill.item() / steps) if self.distill is not None else float("nan"),
            "train_accuracy": self.correct / max(self.seen, 1),
            "steps": self.steps,
            "depth_counts": dict(sorted(self.depth_counts.items())),
        }


def _train_loop(
    model: FlexModel,
    loader: Batches,
    pick_depth: Callable[[], int],
    config: OptimizerConfig,
    epochs: int,
    beta: float,
    distill_target: str,
    device: str | torch.device,
    seed: int,
    eval_loader: Batches | None,
    eval_depths: Sequence[int] | None,
    progress: ProgressFn | None,
    max_steps_per_epoch: int | None,
) -> dict[str, Any]:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    torch.manual_seed(seed)
    model.to(device)
    model.train()
    optimizer = make_optimizer(model.parameters(), config)
    history: dict[str, Any] = {"epochs": [], "wall_s": 0.0}
    start = time.perf_counter()
    for epoch in range(epochs):
        meter = _Meter()
        for step, (xb, yb) in enumerate(loader):
            if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                break
            x, y = xb.to(device), yb.to(device)  # (B, C, H, W), (B,)
            k = pick_depth()
            optimizer.zero_grad(set_to_none=True)  # inactive blocks keep grad None
            parts = centralised_loss(model, x, y, k, beta, distill_target)
            torch.autograd.backward(parts.total)
            optimizer.step()
            correct = (parts.logits.argmax(dim=1) == y).sum()
            meter.add(parts.total, parts.ce, parts.distill, correct, int(y.shape[0]), k)
        record = meter.record()
        record["epoch"] = epoch
        if not math.isfinite(record["loss"]):
            raise TrainingDiverged(f"training loss is {record['loss']} in epoch {epoch}")
        if eval_loader is not None:
            depths = eval_depths if eval_depths is not None else [model.num_blocks]
            record["accuracy"] = evaluate(model, eval_loader, depths, device)
        history["epochs"].append(record)
        if progress is not None:
            progress(epoch, record)
    history["wall_s"] = time.perf_counter() - start
    history["steps"] = sum(r["steps"] for r in history["epochs"])
    return history


def train_flextrain(
    model: FlexModel,
    loader: Batches,
    pi: Mapping[int, float],
    config: OptimizerConfig = PAPER_SGD,
    epochs: int = 1,
    *,
    beta: float = DEFAULT_BETA,
    distill_target: str = DEFAULT_DISTILL_TARGET,
    device: str | torch.device = "cpu",
    seed: int = 0,
    eval_loader: Batches | None = None,
    eval_depths: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    max_steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Algorithm 1: train ``model`` in place, one depth k ~ ``pi`` per mini-batch.

    Args:
        model: the global depth-flexible model (trained in place).
        loader: yields ``(x (B, C, H, W), y (B,))`` batches.
        pi: ``{depth: probability}``; see :meth:`DepthSampler.paper_default`.
        config: optimiser (paper: SGD 0.05, momentum 0.9, weight decay 1e-3).
        epochs: passes over ``loader``.
        beta: auto-distillation weight (paper 0.2; 0 disables).
        distill_target: ``"probs"`` (default) or ``"logits"``; see
            :mod:`flextrain.core.losses` (logits diverge with the paper's recipe).
        device: where to train.
        seed: seeds torch (loader shuffling with the global RNG) and the depth draws.
        eval_loader, eval_depths: if given, accuracy per depth after every epoch
            (default depths: pi's depths).
        progress: called as ``progress(epoch, record)`` after every epoch.
        max_steps_per_epoch: stop each epoch early (``--dry-run``: 1).

    Returns:
        ``{"epochs": [record, ...], "steps": int, "wall_s": float}`` where a record has
        ``loss``, ``ce``, ``distill`` (means per step), ``train_accuracy``, ``steps``,
        ``depth_counts`` and, with ``eval_loader``, ``accuracy`` ``{depth: acc}``.

    Raises:
        TrainingDiverged: an epoch's mean loss is NaN or infinite.
    """
    sampler = DepthSampler(pi, seed)
    if sampler.max_depth > model.num_blocks:
        raise ValueError(f"pi draws depth {sampler.max_depth} > K = {model.num_blocks}")
    return _train_loop(
        model,
        loader,
        sampler.sample,
        config,
        epochs,
        beta,
        distill_target,
        device,
        seed,
        eval_loader,
        eval_depths if eval_depths is not None else list(sampler.depths),
        progress,
        max_steps_per_epoch,
    )


def train_fixed_depth(
    model: FlexModel,
    loader: Batches,
    depth: int,
    config: OptimizerConfig = PAPER_SGD,
    epochs: int = 1,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    eval_loader: Batches | None = None,
    eval_depths: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    max_steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Train only the depth-``depth`` sub-model of ``model`` with plain cross-entropy.

    Same arguments and history as :func:`train_flextrain` (no pi, no distillation).
    """
    k = model.check_depth(depth)
    return _train_loop(
        model,
        loader,
        lambda: k,
        config,
        epochs,
        0.0,
        DEFAULT_DISTILL_TARGET,
        device,
        seed,
        eval_loader,
        eval_depths if eval_depths is not None else [k],
        progress,
        max_steps_per_epoch,
    )


def train_single(
    model: FlexModel,
    loader: Batches,
    config: OptimizerConfig = PAPER_SGD,
    epochs: int = 1,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    eval_loader: Batches | None = None,
    eval_depths: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    max_steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """Baseline *Single*: train the full model; evaluate it truncated at ``eval_depths``.

    ``eval_depths`` defaults to the full depth; pass the tier depths to reproduce the
    paper's "Single (truncated)" column.
    """
    return train_fixed_depth(
        model,
        loader,
        model.num_blocks,
        config,
        epochs,
        device=device,
        seed=seed,
        eval_loader=eval_loader,
        eval_depths=eval_depths,
        progress=progress,
        max_steps_per_epoch=max_steps_per_epoch,
    )


@dataclass
class IndependentRun:
    """One independently trained sub-model of the *Independent* baseline."""

    depth: int
    model: FlexModel
    history: dict[str, Any]


def train_independent(
    spec: ModelSpec,
    loader: Batches,
    depths: Iterable[int],
    config: OptimizerConfig = PAPER_SGD,
    epochs: int = 1,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    eval_loader: Batches | None = None,
    progress: ProgressFn | None = None,
    max_steps_per_epoch: int | None = None,
) -> dict[int, IndependentRun]:
    """Baseline *Independent*: a fresh model per depth, its depth-k sub-model trained alone.

    Each run starts from ``torch.manual_seed(seed)``; evaluate run ``k`` at depth ``k``.
    """
    runs: dict[int, IndependentRun] = {}
    for k in sorted(set(depths)):
        torch.manual_seed(seed)
        model = spec.build()
        history = train_fixed_depth(
            model,
            loader,
            k,
            config,
            epochs,
            device=device,
            seed=seed,
            eval_loader=eval_loader,
            eval_depths=[k],
            progress=progress,
            max_steps_per_epoch=max_steps_per_epoch,
        )
        runs[k] = IndependentRun(depth=k, model=model, history=history)
    return runs
