"""One device's round of federated FlexTrain (arXiv 2310.20457, Algorithm 2).

The device receives the global sub-model of its depth k_j, runs ``local_epochs`` of
SGD on its own data with the loss ``CE(z_{k_j}, y) + beta * ||sg(z_{k_j}) - z_{k_j-1}||^2``
(:func:`flextrain.core.losses.client_loss`; the weakest tier does not distil) and
uploads only its prefix. A fresh optimiser is built every round (momentum does not
carry across rounds), as in FedAvg.

:func:`client_update` is the one implementation used by the in-process simulator and by
the trainer process of a real deployment.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from flextrain.core.losses import (
    DEFAULT_BETA,
    DEFAULT_DISTILL_TARGET,
    TrainingDiverged,
    client_loss,
)
from flextrain.core.models import ModelSpec
from flextrain.core.optim import PAPER_SGD, OptimizerConfig, make_optimizer
from flextrain.core.partition import extract_prefix, load_prefix


@dataclass
class ClientResult:
    """What a device uploads after a round."""

    #: The depth-k prefix state (parameters and BatchNorm buffers) on the CPU;
    #: exactly the prefix keys, new tensors.
    tensors: dict[str, Tensor]
    #: Training examples seen per local epoch (the merge weight of holder-weighted).
    num_examples: int
    #: Mean training loss per step over all local epochs.
    train_loss: float


def client_update(
    global_prefix_state: Mapping[str, Tensor],
    model_spec: ModelSpec,
    depth: int,
    loader: DataLoader[Any] | Iterable[tuple[Tensor, Tensor]],
    local_epochs: int,
    optimizer: OptimizerConfig | None = None,
    beta: float = DEFAULT_BETA,
    distill: bool = True,
    device: str | torch.device = "cpu",
    *,
    distill_target: str = DEFAULT_DISTILL_TARGET,
    max_steps_per_epoch: int | None = None,
    anchor_depths: Sequence[int] = (),
    anchor_loss: str = "none",
) -> ClientResult:
    """Train the depth-``depth`` sub-model locally and return its new prefix.

    Args:
        global_prefix_state: exactly the depth-``depth`` prefix tensors of the global
            model (e.g. from :func:`~flextrain.core.partition.extract_prefix`). Not
            mutated.
        model_spec: rebuilds the model; deeper blocks are built but never run.
        depth: the device's tier k_j, ``1 <= depth <= K``.
        loader: the device's data, ``(x (B, C, H, W), y (B,))`` batches.
        local_epochs: passes over ``loader`` (paper: 10).
        optimizer: defaults to the paper's SGD (0.05, momentum 0.9, weight decay 1e-3).
        beta: distillation weight (paper 0.2; 0 disables).
        distill: False for the weakest tier (and for the FedSmall/FedClass baselines).
        device: where to train.
        distill_target: ``"probs"`` (default) or ``"logits"`` (see
            :mod:`flextrain.core.losses`).
        max_steps_per_epoch: stop each epoch early (``--dry-run``: 1).
        anchor_depths, anchor_loss: research option, off by default: also train the
            prefixes of these depths below ``depth`` (see
            :func:`~flextrain.core.losses.client_loss`).

    Raises:
        PrefixMismatch: ``global_prefix_state`` is not exactly the prefix.
        TrainingDiverged: the local loss became NaN or infinite (nothing is returned).
        ValueError: bad depth or epochs, or an empty loader.
    """
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or not 1 <= depth <= model_spec.num_blocks
    ):
        raise ValueError(f"depth must be an int in [1, {model_spec.num_blocks}], got {depth!r}")
    if local_epochs < 1:
        raise ValueError(f"local_epochs must be >= 1, got {local_epochs}")
    config = optimizer if optimizer is not None else PAPER_SGD
    model = model_spec.build()
    load_prefix(model, global_prefix_state, depth, strict=True)
    model.to(device)
    model.train()
    opt = make_optimizer(model.parameters(), config)

    loss_sum: Tensor | None = None
    steps = 0
    examples_per_epoch = 0
    for epoch in range(local_epochs):
        seen = 0
        for step, (xb, yb) in enumerate(loader):
            if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                break
            x, y = xb.to(device), yb.to(device)  # (B, C, H, W), (B,)
            opt.zero_grad(set_to_none=True)  # blocks beyond depth keep grad None
            parts = client_loss(
                model,
                x,
                y,
                depth,
                beta,
                distill,
                distill_target,
                anchor_depths=anchor_depths,
                anchor_loss=anchor_loss,
            )
            torch.autograd.backward(parts.total)
            opt.step()
            loss = parts.total.detach()
            loss_sum = loss if loss_sum is None else loss_sum + loss
            steps += 1
            seen += int(y.shape[0])
        if epoch == 0:
            examples_per_epoch = seen
    if steps == 0 or examples_per_epoch == 0:
        raise ValueError("the device's loader yielded no examples")
    assert loss_sum is not None
    train_loss = loss_sum.item() / steps
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"local training loss at depth {depth} is {train_loss}")
    tensors = extract_prefix(model.state_dict(), model, depth, clone=True)
    return ClientResult(
        tensors={k: v.to("cpu") for k, v in tensors.items()},
        num_examples=examples_per_epoch,
        train_loss=train_loss,
    )
