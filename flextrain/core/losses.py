"""FlexTrain's auto-distillation losses (arXiv 2310.20457, Algorithms 1 and 2).

The network teaches itself: the output of a prefix one block deeper is a fixed
(stop-gradient) target for a shallower prefix.

* Centralised (Algorithm 1): ``CE(z_k, y) + beta * ||z_k - sg(z_{k+1})||^2``; the
  teacher is one block deeper than the sampled depth k; no term at k = K.
* Federated client (Algorithm 2): ``CE(z_{k_j}, y) + beta * ||sg(z_{k_j}) - z_{k_j-1}||^2``;
  the device's own depth teaches the prefix one block shorter; the weakest tier does
  not distil.

Reduction: the squared L2 norm over classes per example, then the mean over the batch.
``beta = 0`` disables the term (and skips the extra head evaluation).

What ``z`` is, the paper leaves open. Two readings are implemented (``target``):

``"probs"`` (default)
    softmax probabilities. Bounded (the term is at most 2 per example) and stable.
``"logits"``
    raw logits (the method doc's inference). With the paper's recipe (SGD 0.05,
    momentum 0.9, beta 0.2) this *diverges* in our runs: teacher and student share the
    trunk and the head, so a step that moves the student towards the stop-gradient
    target moves the target further (for the head alone the gap is multiplied by
    ``1 - 2*lr*beta*<p_k, p_k - p_{k+1}>`` per step, > 1 whenever the deeper pooled
    features are larger, which residual ReLU blocks make typical). On 8x8 synthetic
    tasks with ResNet-8/20 the term grew to NaN within 2-4 epochs for every seed tried,
    also at lr 0.01, centralised and federated; at beta 0.02 it did not blow up within
    10 epochs but kept growing and cost about 15 accuracy points (one seed). Kept for
    experiments, not as the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor

from flextrain.core.flexmodel import FlexModel

#: The paper's distillation weight.
DEFAULT_BETA: Final[float] = 0.2

#: What the distance is measured on; see the module docstring.
DISTILL_TARGETS: Final[tuple[str, ...]] = ("probs", "logits")
DEFAULT_DISTILL_TARGET: Final[str] = "probs"


class TrainingDiverged(RuntimeError):
    """A training loss became NaN or infinite."""


def distillation_term(
    student: Tensor, teacher: Tensor, target: str = DEFAULT_DISTILL_TARGET
) -> Tensor:
    """Mean over the batch of ``||f(student) - stopgrad(f(teacher))||^2`` (sum over classes).

    ``f`` is softmax for ``target="probs"`` and the identity for ``"logits"``. Both
    arguments are logits ``(B, classes)``. No gradient flows into ``teacher``.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)}")
    t = teacher.detach()  # (B, classes)
    if target == "probs":
        diff = F.softmax(student, dim=1) - F.softmax(t, dim=1)  # (B, classes)
    elif target == "logits":
        diff = student - t  # (B, classes)
    else:
        raise ValueError(
            f"distillation target must be one of {list(DISTILL_TARGETS)}, got {target!r}"
        )
    return diff.pow(2).sum(dim=1).mean()  # ()


@dataclass
class LossParts:
    """A training loss and its parts, for logging."""

    #: The value to backpropagate.
    total: Tensor
    #: Cross-entropy of the trained depth's logits (detached scalar; no device sync).
    ce: Tensor
    #: Distillation term before the ``beta`` weight (detached scalar; 0 when absent).
    distill: Tensor
    #: Logits of the trained depth (B, classes), for accuracy bookkeeping.
    logits: Tensor


def _plain(model: FlexModel, x: Tensor, y: Tensor, depth: int) -> LossParts:
    z = model(x, depth)  # (B, classes)
    ce = F.cross_entropy(z, y)
    return LossParts(total=ce, ce=ce.detach(), distill=torch.zeros_like(ce.detach()), logits=z)


def _check(beta: float, target: str) -> None:
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if target not in DISTILL_TARGETS:
        raise ValueError(
            f"distillation target must be one of {list(DISTILL_TARGETS)}, got {target!r}"
        )


def centralised_loss(
    model: FlexModel,
    x: Tensor,
    y: Tensor,
    depth: int,
    beta: float = DEFAULT_BETA,
    target: str = DEFAULT_DISTILL_TARGET,
) -> LossParts:
    """Algorithm 1 loss at sampled depth ``depth``; the teacher is ``depth + 1``.

    Teacher and student share one trunk pass (:meth:`FlexModel.forward_multi`). The
    teacher's extra block runs in training mode (its BatchNorm running statistics see
    the batch) but, being behind a stop-gradient, receives no gradient.
    """
    _check(beta, target)
    k = model.check_depth(depth)
    if beta == 0 or k == model.num_blocks:
        return _plain(model, x, y, k)
    zs = model.forward_multi(x, (k, k + 1))
    z, teacher = zs[k], zs[k + 1]  # (B, classes) each
    ce = F.cross_entropy(z, y)
    dist = distillation_term(z, teacher, target)
    return LossParts(total=ce + beta * dist, ce=ce.detach(), distill=dist.detach(), logits=z)


#: What a device adds for each anchor prefix (a tier depth below its own) in
#: :func:`client_loss`: nothing (the paper), the distillation term, or cross-entropy
#: plus the distillation term.
ANCHOR_LOSSES: Final[tuple[str, ...]] = ("none", "distill", "ce")

#: Which tier depths below its own a device anchors: the weakest, or all of them.
ANCHOR_TIERS: Final[tuple[str, ...]] = ("weakest", "all")


def anchor_depths(tier_depths: Iterable[int], depth: int, tiers: str) -> tuple[int, ...]:
    """The anchors of a device at ``depth`` in a federation with ``tier_depths``: the
    tier depths below its own, all of them or only the weakest (``tiers``); the one rule
    for the simulator and the aggregator."""
    if tiers not in ANCHOR_TIERS:
        raise ValueError(f"anchor tiers must be one of {list(ANCHOR_TIERS)}, got {tiers!r}")
    below = sorted({d for d in tier_depths if d < depth})
    return tuple(below if tiers == "all" else below[:1])


def client_loss(
    model: FlexModel,
    x: Tensor,
    y: Tensor,
    depth: int,
    beta: float = DEFAULT_BETA,
    distill: bool = True,
    target: str = DEFAULT_DISTILL_TARGET,
    *,
    anchor_depths: Sequence[int] = (),
    anchor_loss: str = "none",
) -> LossParts:
    """Algorithm 2 device loss at the device's depth ``depth`` (its tier k_j).

    The device's own output ``z_k`` is the teacher of ``z_{k-1}``. No term when
    ``distill`` is False (the weakest tier), ``beta == 0`` or ``depth < 2`` (the
    student would have no block of its own).

    Research option (off by default; not the paper's): anchor depths A (tier depths of
    the federation, e.g. the weakest one) with ``anchor_loss``. For the anchors a < k
    the device adds the mean over them of

    * ``"distill"``: ``beta * ||sg(z_k) - z_a||^2`` (``z_k`` also teaches ``z_a``; not
      twice when a = k - 1 already has the paper's term);
    * ``"ce"``: that plus ``CE(z_a, y)``: the device also trains the anchor prefix on
      its own labels.

    Anchors at or above ``depth`` add nothing. The extra heads read the same trunk pass
    (the gradients of all outputs meet in the shared blocks), so each anchor costs one
    more head evaluation.
    """
    _check(beta, target)
    if anchor_loss not in ANCHOR_LOSSES:
        raise ValueError(f"anchor_loss must be one of {list(ANCHOR_LOSSES)}, got {anchor_loss!r}")
    k = model.check_depth(depth)
    anchors: list[int] = []
    if anchor_loss != "none":
        anchors = sorted({a for a in map(model.check_depth, anchor_depths) if a < k})
    teach = distill and beta != 0 and k >= 2
    if not anchors and not teach:
        return _plain(model, x, y, k)
    students = ({k - 1} if teach else set()) | set(anchors)
    zs = model.forward_multi(x, (k, *students))
    z = zs[k]  # (B, classes)
    ce = F.cross_entropy(z, y)
    total = ce
    dist = torch.zeros_like(ce.detach())
    if teach:
        dist = distillation_term(zs[k - 1], z, target)
        total = total + beta * dist
    if anchors:
        extra: Tensor | None = None
        for a in anchors:
            term: Tensor | None = None
            if a != k - 1 or not teach:
                d = distillation_term(zs[a], z, target)
                dist = dist + d.detach() / len(anchors)
                term = beta * d
            if anchor_loss == "ce":
                c = F.cross_entropy(zs[a], y)
                term = c if term is None else term + c
            if term is not None:
                extra = term if extra is None else extra + term
        if extra is not None:
            total = total + extra / len(anchors)
    return LossParts(total=total, ce=ce.detach(), distill=dist.detach(), logits=z)
