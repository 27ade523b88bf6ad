"""What the robust merge costs the aggregator: one round's merge of ResNet-56 (100
classes) updates from 20 devices of the paper's Table 3 mix, plain vs robust.

    python -m benchmarks.robust_merge [--repeats 7] [--out DIR]

Each update goes through the path the aggregator uses (``Accumulator.stage``, then its
payload written in 2 MiB pieces, values checked, then ``commit``), so "fold" is the
time all 20 updates take to be received into the accumulator, "finish" the time of
``finish()`` when the round closes, and "merge" their sum: the merge's share of a round.
The averaging strategies run in steady state, their staging buffers recycled from the
round before (as ``Aggregation.close_round`` does). One torch thread, as the aggregator
merges. Strategies alternate within each repeat; medians over the repeats are reported
with the range. "held" is the accumulator's memory when the round closes, beyond the
global state: the running sums and their staging copy, or the kept updates of the
robust merge.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.aggregation.ours import TABLE3_TIERS
from flextrain.core.merge import Accumulator, MergeStrategy, RobustMerge, get_strategy
from flextrain.core.merge.base import LinearAccumulator, Piece
from flextrain.core.models import ModelSpec
from flextrain.core.partition import extract_prefix

#: Values of one 2 MiB wire chunk (float32).
CHUNK_VALUES = (2 << 20) // 4

#: label -> strategy.
STRATEGIES: dict[str, MergeStrategy] = {
    "pad": get_strategy("pad"),
    "holder-weighted": get_strategy("holder-weighted"),
    "robust (trimmed-mean 0.2, clip 3)": RobustMerge(),
    "robust (trimmed-mean 0.2, no clip)": RobustMerge(clip_multiple=None),
    "robust (median, clip 3)": RobustMerge(method="median"),
}


def make_updates(global_state: Mapping[str, Tensor], seed: int) -> list[dict[str, Tensor]]:
    """One update per device of the Table 3 mix: its prefix plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    updates = []
    for _, depth, replicas in TABLE3_TIERS:
        for _ in range(replicas):
            prefix = extract_prefix(dict(global_state), None, depth)
            updates.append(
                {
                    k: v + 0.01 * torch.randn(v.shape, generator=gen)
                    if v.is_floating_point()
                    else v.clone()
                    for k, v in prefix.items()
                }
            )
    return updates


def pieces_of(tensors: Mapping[str, Tensor]) -> list[list[Piece]]:
    """The update's values cut as 2 MiB chunks of its payload would deliver them."""
    chunks: list[list[Piece]] = [[]]
    room = CHUNK_VALUES
    for key, value in tensors.items():
        flat = value.reshape(-1)
        start = 0
        while start < flat.numel():
            take = min(room, flat.numel() - start)
            chunks[-1].append((key, start, flat[start : start + take]))
            start += take
            room -= take
            if room == 0:
                chunks.append([])
                room = CHUNK_VALUES
    return [c for c in chunks if c]


def held_bytes(acc: Accumulator) -> int:
    """Bytes of the tensors the accumulator holds beyond the global state (sums and
    staging buffers, or kept updates)."""
    total = 0
    for name, value in vars(acc).items():
        if isinstance(value, dict) and name != "_global":
            for item in value.values():
                items = item if isinstance(item, list) else [item]
                total += sum(t.numel() * t.element_size() for t in items if isinstance(t, Tensor))
    return total


def one_round(
    strategy: MergeStrategy,
    global_state: dict[str, Tensor],
    updates: list[tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], list[list[Piece]]]],
    previous: Accumulator | None,
) -> tuple[float, float, int, Accumulator]:
    acc = strategy.begin(global_state, expected_clients=len(updates))
    if isinstance(acc, LinearAccumulator) and previous is not None:
        acc.recycle(previous)
    t0 = time.perf_counter()
    for layout, chunks in updates:
        staged = acc.stage(layout, 10)
        for chunk in chunks:
            staged.write(chunk)
        staged.commit()
    t1 = time.perf_counter()
    held = held_bytes(acc)
    acc.finish()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, held, acc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/robust_merge"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = ModelSpec("resnet", 56, 100, 3, 32)
    global_state = {k: v.detach().clone() for k, v in spec.build().state_dict().items()}
    model_bytes = sum(v.numel() * v.element_size() for v in global_state.values())
    raw = make_updates(global_state, seed=1)
    updates = [({k: (tuple(v.shape), v.dtype) for k, v in u.items()}, pieces_of(u)) for u in raw]
    update_bytes = sum(v.numel() * v.element_size() for u in raw for v in u.values())
    results: dict[str, dict[str, list[float]]] = {
        label: {"fold": [], "finish": [], "held": []} for label in STRATEGIES
    }
    previous: dict[str, Accumulator | None] = dict.fromkeys(STRATEGIES)
    load_start = os.getloadavg()
    for repeat in range(args.repeats + 1):  # the first is a warm-up
        for label, strategy in STRATEGIES.items():
            fold, finish, held, acc = one_round(strategy, global_state, updates, previous[label])
            previous[label] = acc
            if repeat:
                results[label]["fold"].append(fold)
                results[label]["finish"].append(finish)
                results[label]["held"].append(held)
    load_end = os.getloadavg()

    def cell(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):.0f} ({1000 * min(values):.0f}-{1000 * max(values):.0f})"

    lines = [
        f"Merge of one round: ResNet-56/100 classes ({model_bytes / 1e6:.2f} MB of state), 20 "
        f"updates of the Table 3 mix ({update_bytes / 1e6:.1f} MB in all), 1 torch thread, "
        f"{args.repeats} repeats (median, range) in ms; load average {load_start[0]:.1f} at "
        f"start, {load_end[0]:.1f} at end on {os.cpu_count()} cores.",
        "",
        "| strategy | fold (20 updates) | finish | merge (fold + finish) | held at close |",
        "|---|---|---|---|---|",
    ]
    for label, r in results.items():
        merge = [a + b for a, b in zip(r["fold"], r["finish"], strict=True)]
        held = statistics.median(r["held"])
        lines.append(
            f"| {label} | {cell(r['fold'])} | {cell(r['finish'])} | {cell(merge)} | "
            f"{held / 1e6:.1f} MB ({held / model_bytes:.1f}x model) |"
        )
    text = "\n".join(lines)
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "robust_merge.md").write_text(text + "\n")
    data: dict[str, Any] = {
        "model_bytes": model_bytes,
        "update_bytes": update_bytes,
        "repeats": args.repeats,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "torch": torch.__version__,
        "results": results,
    }
    (args.out / "robust_merge.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
