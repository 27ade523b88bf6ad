"""Pick a device's tier: the deepest prefix that fits its budget (pure Python, no torch).

In FlexTrain (arXiv 2310.20457, Sec. 4) each device j trains the largest prefix k_j of
the global network that fits its budget. This module turns a budget (parameters and/or
bytes of memory) into that depth. The Kubernetes operator derives ``depth: auto`` with
it, so it must stay free of torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flextrain.core.arch import ArchProfile
from flextrain.core.families import Options, profile

#: Batch size of the paper's recipe; the default for memory estimates.
DEFAULT_BATCH_SIZE = 64


class BudgetTooSmall(ValueError):
    """Even the shallowest prefix (depth 1) does not fit the given budget."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated training memory of one prefix, in bytes (see :func:`training_memory`)."""

    depth: int
    #: Prefix state (parameters + BatchNorm running stats and counters).
    weights: int
    #: One gradient per trainable parameter.
    gradients: int
    #: One SGD momentum buffer per trainable parameter.
    optimizer: int
    #: Values kept for backward, for the whole batch.
    activations: int

    @property
    def total(self) -> int:
        """Sum of all parts."""
        return self.weights + self.gradients + self.optimizer + self.activations


def training_memory(
    arch: ArchProfile,
    depth: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    bytes_per_value: int = 4,
    optimizer_values_per_param: int = 1,
) -> MemoryEstimate:
    """Estimate the bytes needed to train the depth-``depth`` prefix.

    The estimate is::

        weights     = state_bytes(depth)                      (params + BN stats)
        gradients   = params(depth) * bytes_per_value
        optimizer   = params(depth) * optimizer_values_per_param * bytes_per_value
        activations = batch_size * activations(depth) * bytes_per_value

    ``optimizer_values_per_param`` is 1 for SGD with momentum (the paper's optimiser),
    2 for Adam. ``activations(depth)`` is the analytic count of values autograd keeps
    per example (:mod:`flextrain.core.arch`: the input image; per convolution its
    output and the following ReLU output; pooled features and logits). Framework
    workspace, the CUDA context and the data pipeline are not included; leave headroom.
    """
    if batch_size < 1 or bytes_per_value < 1 or optimizer_values_per_param < 0:
        raise ValueError("batch_size and bytes_per_value must be >= 1")
    params = arch.parameters(depth)
    return MemoryEstimate(
        depth=depth,
        weights=arch.state_bytes(depth, bytes_per_value),
        gradients=params * bytes_per_value,
        optimizer=params * optimizer_values_per_param * bytes_per_value,
        activations=batch_size * arch.activations(depth) * bytes_per_value,
    )


def deepest_depth_for_budget(
    family: str,
    layers: int,
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    max_parameters: int | None = None,
    memory_bytes: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    bytes_per_value: int = 4,
    options: Mapping[str, int] | Options | None = None,
) -> int:
    """The deepest depth ``k`` in ``1..K`` whose prefix fits every given budget.

    Args:
        family, layers, num_classes, in_channels, image_size: the global model.
        max_parameters: the prefix's trainable parameters (BatchNorm affine included)
            must be ``<=`` this. None: no parameter budget.
        memory_bytes: :func:`training_memory` ``.total`` must be ``<=`` this.
            None: no memory budget.
        batch_size: examples per mini-batch, for the activation part of the estimate.
        bytes_per_value: 4 for float32 training, 2 for half precision.
        options: the family's options (ViT: embed_dim, heads, patch_size, mlp_ratio);
            None: the family's defaults.

    Returns:
        The deepest fitting depth; ``K`` (the full model) when no budget is given.
        Costs grow with depth, so the fitting depths are always ``1..k``.

    Raises:
        BudgetTooSmall: depth 1 does not fit; the message says what depth 1 needs.
        ValueError: invalid model description or a negative budget.
    """
    arch = profile(family, layers, num_classes, in_channels, image_size, options)
    for name, value in (("max_parameters", max_parameters), ("memory_bytes", memory_bytes)):
        if value is not None and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")

    def fits(k: int) -> bool:
        if max_parameters is not None and arch.parameters(k) > max_parameters:
            return False
        if memory_bytes is not None:
            need = training_memory(
                arch, k, batch_size=batch_size, bytes_per_value=bytes_per_value
            ).total
            if need > memory_bytes:
                return False
        return True

    fitting = [k for k in range(1, arch.num_blocks + 1) if fits(k)]
    if not fitting:
        need_mem = training_memory(
            arch, 1, batch_size=batch_size, bytes_per_value=bytes_per_value
        ).total
        raise BudgetTooSmall(
            f"even depth 1 of {arch.label} does not fit: it has {arch.parameters(1)} "
            f"parameters (budget {max_parameters}) and needs about {need_mem} bytes to train "
            f"at batch size {batch_size} (budget {memory_bytes})"
        )
    return fitting[-1]
