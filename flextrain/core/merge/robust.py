"""Robust merge: per-layer norm clipping, then a coordinate-wise trimmed mean or median
over each tensor's holders.

A defence that plain averaging lacks, selectable for FlexTrain (arXiv 2310.20457) runs.
Averaging lets one client move the global model as far as it likes; a coordinate-wise
trimmed mean or median bounds what a minority of clients can do to each coordinate
(Yin, Chen, Ramchandran and Bartlett, "Byzantine-robust distributed learning: towards
optimal statistical rates", ICML 2018), and clipping each client's update to a bounded
norm limits what a single update can inject into a layer (Sun, Kairouz, Suresh and
McMahan, "Can you really backdoor federated learning?", 2019). FlexTrain's updates are
partial (a device sends its prefix only), so both apply *per tensor, over the clients
that sent it*: a deep block held by the strong tier is judged among the strong tier's
updates only, never diluted or dragged by devices that do not hold it.

For a tensor t with global value g, whose holders H_t (h = |H_t|) sent u_j::

    d_j  = u_j - g                                         # each holder's delta
    m    = median_j ||d_j||_2                              # per tensor (layer)
    d_j <- d_j * min(1, c * m / ||d_j||_2)                 # clipping, c = clip_multiple
    new_t = g + trimmed_mean_j(d_j; k = floor(f * h))      # f = trim_fraction
            (or g + median_j(d_j), coordinate by coordinate)

The trimmed mean drops the k smallest and the k largest values of each coordinate and
averages the h - 2k left (with f < 0.5 at least one is left); the median of an even
number of values is the mean of the two middle ones. Both, and the median of the norms,
are unweighted: example counts are validated but do not weigh, which is the point of a
robust statistic (a count must not buy a client influence; they are bounded by the
sender's shard anyway). ``clip_multiple`` None or 0 turns clipping off; otherwise it is
at least 1, so a tensor's median update is never clipped.

Edge cases: zero clients -> a copy of the global state; a tensor nobody sent -> the
global value; a tensor one client sent -> that client's value exactly (its norm is the
median, so it is not clipped, and the trimmed mean of one value is that value); two
holders -> trimming leaves both for f < 0.5 (their mean; the median is the same mean).
Integer tensors: maximum over holders (see :mod:`.base`). Quorum: the statistic is over
the holders of the accepted updates, whatever the round expected.

Memory: unlike the averaging strategies, this one cannot stream. The accumulator keeps
every accepted update's tensors until ``finish`` (in the dtype they arrived in: half
the memory with float16 transport), so it holds up to clients x model; ``finish`` then
works through each tensor in slices of its coordinates (holders x 65,536 values at a
time). Staged updates use the default assembling staging (:class:`.base.AssembledUpdate`):
an update is kept only at ``commit``; a rejected or aborted one leaves no trace.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final

import torch
from torch import Tensor

from flextrain.core.merge.base import (
    Accumulator,
    AssembledUpdate,
    MergeStrategy,
    StagedUpdate,
    StageLayout,
)

#: The coordinate-wise statistics of the robust merge.
ROBUST_METHODS: Final[tuple[str, ...]] = ("trimmed-mean", "median")
#: Method when none is given.
DEFAULT_METHOD: Final[str] = "trimmed-mean"
#: Share of each coordinate's holders trimmed from each end, when none is given: with
#: the paper's 6 full-depth devices one is trimmed from each end of the deep blocks.
DEFAULT_TRIM_FRACTION: Final[float] = 0.2
#: Clipping bound as a multiple of a tensor's median update norm, when none is given.
DEFAULT_CLIP_MULTIPLE: Final[float] = 3.0

#: Coordinates of one tensor reduced at a time in ``finish`` (bounds its scratch memory
#: to holders x this many values).
_SLICE: Final[int] = 1 << 16
#: Guards floor(f * h) against a product computed just under an integer (0.29 * 100).
_EPS: Final[float] = 1e-9


class RobustMergeConfigError(ValueError):
    """The robust merge was configured with values outside its limits."""


def trimmed_count(trim_fraction: float, holders: int) -> int:
    """How many values the trimmed mean drops from each end: floor(f x holders)."""
    return math.floor(trim_fraction * holders + _EPS)


def _middle(ordered: Tensor) -> Tensor:
    """Median along dim 0 of values sorted along dim 0 (mean of the two middle ones
    for an even count)."""
    h = ordered.shape[0]
    if h % 2:
        return ordered[h // 2]
    return (ordered[h // 2 - 1] + ordered[h // 2]) / 2


class RobustAccumulator(Accumulator):
    """Kept updates for :class:`RobustMerge`: per floating tensor, the flat values each
    holder sent; per integer tensor, the running maximum."""

    def __init__(
        self,
        global_state: Mapping[str, Tensor],
        expected_clients: int,
        *,
        method: str,
        trim_fraction: float,
        clip_multiple: float | None,
    ) -> None:
        super().__init__(global_state, expected_clients)
        self.method = method
        self.trim_fraction = trim_fraction
        self.clip_multiple = clip_multiple
        #: key -> flat values of each holder of a floating tensor, in arrival order.
        self._held: dict[str, list[Tensor]] = {}
        #: key -> flat running maximum of an integer tensor.
        self._max: dict[str, Tensor] = {}

    def _fold(self, tensors: Mapping[str, Tensor], num_examples: int) -> None:
        self._keep(tensors, owned=False)

    def _keep(self, tensors: Mapping[str, Tensor], *, owned: bool) -> None:
        """Keep a validated update; ``owned``: nobody else holds the tensors (a staged
        update's assembled copy), so they are kept without a copy."""
        for key, value in tensors.items():
            ref = self._global[key]
            flat = value.detach().reshape(-1)
            if self._layout[key][1]:
                self._held.setdefault(key, []).append(flat.to(ref.device, copy=not owned))
            else:
                flat = flat.to(ref.device, ref.dtype)
                total = self._max.get(key)
                self._max[key] = flat.clone() if total is None else torch.maximum(total, flat)

    def _stage(self, layout: StageLayout, num_examples: int) -> StagedUpdate:
        return _KeptUpdate(self, layout, num_examples)

    def _result(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for key, ref in self._global.items():
            if key in self._max:
                out[key] = self._max[key].view(ref.shape).clone()
            elif key not in self._held:
                out[key] = ref.clone()
            elif len(self._held[key]) == 1:
                out[key] = self._held[key][0].to(ref.dtype, copy=True).view(ref.shape)
            else:
                out[key] = self._merge_tensor(key).to(ref.dtype).view(ref.shape)
        self._held, self._max = {}, {}
        return out

    def _merge_tensor(self, key: str) -> Tensor:
        """g + robust statistic of the (clipped) deltas of ``key``'s holders, flat."""
        held = self._held[key]
        dtype = self._sum_dtype(key)
        g = self._global[key].reshape(-1).to(dtype)
        scale = self._clip_scale(g, held) if self.clip_multiple else None
        h = len(held)
        k = trimmed_count(self.trim_fraction, h) if self.method == "trimmed-mean" else None
        new = torch.empty_like(g)
        for start in range(0, g.numel(), _SLICE):
            end = min(start + _SLICE, g.numel())
            base = g[start:end]
            pieces = [v[start:end] for v in held]
            if any(p.dtype != pieces[0].dtype for p in pieces):
                pieces = [p.to(dtype) for p in pieces]
            deltas = torch.stack(pieces).to(dtype).sub_(base)  # (h, n)
            if scale is not None:
                deltas.mul_(scale)
            if k == 0 or h <= 2:  # nothing trimmed; the median of two is their mean
                delta = deltas.mean(dim=0)
            else:
                ordered = deltas.sort(dim=0).values  # (h, n), ascending per coordinate
                if k is None or h - 2 * k <= 0:
                    delta = _middle(ordered)
                else:
                    delta = ordered[k : h - k].mean(dim=0)
            torch.add(base, delta, out=new[start:end])
        return new

    def _clip_scale(self, g: Tensor, held: list[Tensor]) -> Tensor:
        """(h, 1) factors bringing each holder's delta to at most clip_multiple x the
        median delta norm (1 for the others)."""
        assert self.clip_multiple is not None
        norms = torch.stack([torch.linalg.vector_norm(v.to(g.dtype) - g) for v in held])  # (h,)
        bound = self.clip_multiple * _middle(norms.sort().values)
        # A norm above the bound is > 0; the quotient elsewhere is not used.
        scale = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
        return scale.unsqueeze(1)


class _KeptUpdate(AssembledUpdate):
    """Assembling staging whose whole tensors are kept at commit as they are (no copy)."""

    _acc: RobustAccumulator

    def _commit(self) -> None:
        self._acc._keep(self._tensors, owned=True)
        self._tensors = {}


class RobustMerge(MergeStrategy):
    """``"robust"``: per-tensor norm clipping, then a coordinate-wise trimmed mean or
    median over the tensor's holders (see the module docstring)."""

    name = "robust"

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        trim_fraction: float | None = None,
        clip_multiple: float | None = DEFAULT_CLIP_MULTIPLE,
    ) -> None:
        """Args:
            method: ``"trimmed-mean"`` or ``"median"``.
            trim_fraction: share of each coordinate's holders dropped from each end by
                the trimmed mean, in [0, 0.5); None: 0.2. Not allowed with the median.
            clip_multiple: clip each holder's delta of a tensor to this multiple of the
                median delta norm of its holders, >= 1; None or 0: no clipping.

        Raises:
            RobustMergeConfigError: a value is outside these limits.
        """
        if method not in ROBUST_METHODS:
            raise RobustMergeConfigError(
                f"robust merge method must be one of {list(ROBUST_METHODS)}, got {method!r}"
            )
        if trim_fraction is not None:
            if method != "trimmed-mean":
                raise RobustMergeConfigError(
                    f"trim_fraction applies to the trimmed mean only, not to {method}"
                )
            if not 0 <= trim_fraction < 0.5:
                raise RobustMergeConfigError(
                    f"trim_fraction must be in [0, 0.5), got {trim_fraction}"
                )
        if clip_multiple and not (math.isfinite(clip_multiple) and clip_multiple >= 1):
            raise RobustMergeConfigError(
                f"clip_multiple must be >= 1 (or 0/None: no clipping), got {clip_multiple}"
            )
        self.method = method
        self.trim_fraction = (
            (DEFAULT_TRIM_FRACTION if trim_fraction is None else float(trim_fraction))
            if method == "trimmed-mean"
            else 0.0
        )
        self.clip_multiple = float(clip_multiple) if clip_multiple else None

    def __repr__(self) -> str:
        trim = f", trim_fraction={self.trim_fraction}" if self.method == "trimmed-mean" else ""
        return f"RobustMerge(method={self.method!r}{trim}, clip_multiple={self.clip_multiple})"

    def begin(self, global_state: Mapping[str, Tensor], expected_clients: int) -> RobustAccumulator:
        """Start a round; see :meth:`MergeStrategy.begin`."""
        return RobustAccumulator(
            global_state,
            expected_clients,
            method=self.method,
            trim_fraction=self.trim_fraction,
            clip_multiple=self.clip_multiple,
        )
