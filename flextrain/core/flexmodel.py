"""The torch side of every model family: a stem, K blocks and one shared head.

FlexTrain (arXiv 2310.20457) runs the *prefix* of depth k of one global network. Every
family's module subclasses :class:`FlexModel`, which owns the one block loop that stops
at the active depth; a family defines ``stem``, ``blocks`` and ``head`` and, where the
head cannot read a shallow prefix's features as they are, :meth:`FlexModel.logits_from`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn


class FlexModel(nn.Module):
    """A network runnable at any depth ``0..num_blocks``.

    Subclasses set ``stem`` (input -> features), ``blocks`` (an ``nn.ModuleList`` of
    blocks, features -> features) and ``head`` (features -> logits). State-dict names
    are therefore ``stem.*``, ``blocks.{i}.*`` and ``head.*``.
    """

    stem: nn.Module
    blocks: nn.ModuleList
    head: nn.Module

    @property
    def num_blocks(self) -> int:
        """Number of blocks K (the deepest depth)."""
        return len(self.blocks)

    def check_depth(self, depth: int | None) -> int:
        """Resolve ``None`` to ``num_blocks`` and validate ``0 <= depth <= num_blocks``."""
        if depth is None:
            return self.num_blocks
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"depth must be an int or None, got {depth!r}")
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(f"depth must be in [0, {self.num_blocks}], got {depth}")
        return depth

    def logits_from(self, h: Tensor, depth: int) -> Tensor:
        """Logits of the shared head from the features after ``depth`` blocks."""
        logits: Tensor = self.head(h)  # (B, classes)
        return logits

    def forward(self, x: Tensor, depth: int | None = None) -> Tensor:
        """Logits of the depth-``depth`` sub-model (full model when None)."""
        k = self.check_depth(depth)
        h = self.stem(x)
        for block in self.blocks[:k]:
            h = block(h)
        return self.logits_from(h, k)  # (B, classes)

    def forward_multi(self, x: Tensor, depths: Iterable[int]) -> dict[int, Tensor]:
        """Logits at several depths from ONE pass through the shared trunk.

        Returns ``{depth: logits (B, classes)}``. Blocks beyond ``max(depths)`` are not
        run. Used by auto-distillation, where teacher and student differ by one block.
        """
        wanted = sorted({self.check_depth(d) for d in depths})
        if not wanted:
            raise ValueError("forward_multi needs at least one depth")
        out: dict[int, Tensor] = {}
        h = self.stem(x)
        for d in range(wanted[-1] + 1):
            if d in wanted:
                out[d] = self.logits_from(h, d)  # (B, classes)
            if d < wanted[-1]:
                h = self.blocks[d](h)
        return out


__all__ = ["FlexModel"]
