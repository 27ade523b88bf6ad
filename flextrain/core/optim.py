"""Optimiser configuration shared by centralised and federated training.

The defaults are the paper's recipe (arXiv 2310.20457, Sec. 5): SGD, learning rate
0.05, momentum 0.9, weight decay 1e-3. The paper gives no learning-rate schedule; the
learning rate is constant.

Only the active prefix may move. PyTorch's SGD and Adam skip every parameter whose
``.grad`` is None, so clearing gradients with ``zero_grad(set_to_none=True)`` before
each step keeps weight decay and momentum from drifting inactive blocks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

OPTIMIZERS: Final[tuple[str, ...]] = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerConfig:
    """How to build the optimiser of one training run or one client round."""

    #: ``"sgd"`` (paper) or ``"adam"``.
    name: str = "sgd"
    #: Learning rate; 0.05 in the paper. Constant (the paper gives no schedule).
    lr: float = 0.05
    #: SGD momentum; 0.9 in the paper. Ignored by Adam.
    momentum: float = 0.9
    #: L2 weight decay (coupled, as in torch.optim.SGD); 1e-3 in the paper.
    weight_decay: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.momentum < 0 or self.weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")


#: The paper's recipe: SGD, lr 0.05, momentum 0.9, weight decay 1e-3.
PAPER_SGD: Final[OptimizerConfig] = OptimizerConfig()


def make_optimizer(
    params: Iterable[nn.Parameter], config: OptimizerConfig
) -> torch.optim.Optimizer:
    """Build the optimiser described by ``config`` over ``params``."""
    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
