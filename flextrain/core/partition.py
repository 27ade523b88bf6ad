"""Which state-dict tensors make up the depth-k sub-model, and moving them in and out.

In FlexTrain (arXiv 2310.20457, Algorithm 2) the server sends device j the sub-model of
depth k_j and the device uploads only that prefix. The prefix is the stem, blocks
``0..k-1`` and the head, with *all* their state-dict entries: parameters and BatchNorm
buffers (``running_mean``, ``running_var``, ``num_batches_tracked``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from flextrain.core.flexmodel import FlexModel

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


class PrefixMismatch(ValueError):
    """Tensors given for a depth-k sub-model do not match its state-dict keys or shapes."""


def block_index(key: str) -> int | None:
    """Block number of a ``blocks.{i}.*`` key; None for ``stem.*`` and ``head.*`` keys.

    Raises:
        PrefixMismatch: the key belongs to none of ``stem``, ``blocks.{i}``, ``head``.
    """
    if key.startswith(("stem.", "head.")):
        return None
    m = _BLOCK_KEY.match(key)
    if m is None:
        raise PrefixMismatch(f"state-dict key {key!r} is not under stem., blocks.<i>. or head.")
    return int(m.group(1))


def _all_keys(model_or_keys: nn.Module | Iterable[str]) -> list[str]:
    if isinstance(model_or_keys, nn.Module):
        return list(model_or_keys.state_dict().keys())
    return list(model_or_keys)


def _num_blocks(model_or_keys: nn.Module | Iterable[str], keys: list[str]) -> int:
    if isinstance(model_or_keys, FlexModel):
        return model_or_keys.num_blocks
    indices = [i for i in (block_index(k) for k in keys) if i is not None]
    return max(indices) + 1 if indices else 0


def prefix_keys(model_or_keys: nn.Module | Iterable[str], depth: int) -> list[str]:
    """State-dict keys of the depth-``depth`` sub-model, in state-dict order.

    Args:
        model_or_keys: a :class:`FlexModel` or the full model's state-dict keys.
        depth: number of blocks, ``0 <= depth <= K``.

    Raises:
        ValueError: depth out of range.
        PrefixMismatch: a key outside ``stem.``, ``blocks.<i>.``, ``head.``.
    """
    keys = _all_keys(model_or_keys)
    k = _num_blocks(model_or_keys, keys)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= k:
        raise ValueError(f"depth must be an int in [0, {k}], got {depth!r}")
    out: list[str] = []
    for key in keys:
        i = block_index(key)
        if i is None or i < depth:
            out.append(key)
    return out


def extract_prefix(
    state_dict: Mapping[str, Tensor],
    model_or_keys: nn.Module | Iterable[str] | None,
    depth: int,
    *,
    clone: bool = True,
) -> dict[str, Tensor]:
    """The tensors of the depth-``depth`` sub-model taken from ``state_dict``.

    Args:
        state_dict: the full model's state (e.g. the global state on the server).
        model_or_keys: defines the full key set; None means ``state_dict``'s own keys.
        depth: number of blocks of the prefix.
        clone: return detached copies (default) so later training cannot alias them.

    Raises:
        PrefixMismatch: ``state_dict`` lacks a key of the prefix.
    """
    universe = state_dict.keys() if model_or_keys is None else model_or_keys
    keys = prefix_keys(universe, depth)
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise PrefixMismatch(f"state dict lacks {len(missing)} prefix tensor(s): {missing[:5]}")
    if clone:
        return {k: state_dict[k].detach().clone() for k in keys}
    return {k: state_dict[k] for k in keys}


def load_prefix(
    model: FlexModel, tensors: Mapping[str, Tensor], depth: int, *, strict: bool = True
) -> None:
    """Copy the depth-``depth`` prefix tensors into ``model`` (``tensors`` is not mutated).

    Every key of the prefix must be present with the model's shape; floating tensors are
    cast to the model's dtype. With ``strict=True`` (default) ``tensors`` must hold
    exactly the prefix keys; with ``strict=False`` keys outside the prefix (e.g. a full
    state dict) are ignored. Missing prefix keys are an error in both modes: a partial
    prefix would silently keep random weights. Deeper blocks of ``model`` are untouched.

    Raises:
        PrefixMismatch: missing, unexpected (strict) or wrongly shaped tensors; the model
            is left unchanged.
    """
    own = model.state_dict()
    keys = prefix_keys(model, depth)
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise PrefixMismatch(
            f"depth-{depth} prefix misses {len(missing)} tensor(s), e.g. {missing[:5]}"
        )
    if strict:
        wanted = set(keys)
        unexpected = [k for k in tensors if k not in wanted]
        if unexpected:
            raise PrefixMismatch(
                f"tensors hold {len(unexpected)} key(s) outside the depth-{depth} prefix, "
                f"e.g. {unexpected[:5]}"
            )
    for k in keys:
        if tuple(tensors[k].shape) != tuple(own[k].shape):
            raise PrefixMismatch(
                f"tensor {k!r} has shape {tuple(tensors[k].shape)}, "
                f"the model expects {tuple(own[k].shape)}"
            )
    with torch.no_grad():
        for k in keys:
            own[k].copy_(tensors[k])


def tensor_bytes(tensors: Mapping[str, Tensor]) -> int:
    """Sum of ``numel * element_size`` over ``tensors`` (bytes on the wire, unpacked)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
