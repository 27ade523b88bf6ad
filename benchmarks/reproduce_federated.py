"""Reproduce the paper's Table 4 (federated FlexTrain) at reduced scale.

FlexTrain (arXiv 2310.20457, Sec. 5.2, Tables 3 and 4) compares the mean device test
accuracy of Federated FlexTrain with FedSmall (FedAvg of the model the weakest device
can hold, on all devices) and FedClass (one FedAvg model per tier) over 20 devices in 8
tiers. This benchmark runs that comparison with ``flextrain.core.simulator.simulate``
on Fashion-MNIST with a ResNet-20 backbone (K = 9), the paper's tiers mapped by
parameter share onto ResNet-20's depths, for an IID and a Dirichlet label-skewed split
(``flextrain.data.partition``), and with both server merges: the paper's ``pad`` and
``holder-weighted``. ``--runs flextrain-pad,flextrain-robust`` compares the paper's merge
with the robust one (``--robust-method``, ``--trim-fraction``, ``--clip-multiple``).

Reported: mean device accuracy and accuracy per tier on the full test set after the
last round, bytes uploaded per round relative to full-model FedAvg (every device
uploading the whole model), wall time. Run ``python -m benchmarks.reproduce_federated
--help``. Only orderings and gaps are comparable to the paper.
"""

from __future__ import annotations

# First: sets OMP_WAIT_POLICY before torch loads OpenMP (see its docstring).
from benchmarks.reproduce_common import (
    add_scale_arguments,
    begin,
    csv_list,
    fill_defaults,
    log,
    markdown_table,
    pct,
    write_outputs,
)

# isort: split

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from flextrain.core.arch import ArchProfile, closest_depth_to_parameter_share, profile
from flextrain.core.baselines import plan_devices
from flextrain.core.centralised import evaluate
from flextrain.core.merge import (
    ROBUST_METHODS,
    STRATEGIES,
    MergeStrategy,
    RobustMerge,
)
from flextrain.core.merge.robust import DEFAULT_CLIP_MULTIPLE
from flextrain.core.models import ModelSpec
from flextrain.core.optim import PAPER_SGD
from flextrain.core.simulator import RoundRecord, SimulationResult, simulate
from flextrain.data import (
    make_loader,
    partition,
    shard_label_counts,
    stratified_subset,
)

NAME = "federated"

#: The paper's Table 3: (parameter share r_j of ResNet-56, depth k_j on ResNet-56, devices).
PAPER_TIERS: tuple[tuple[float, int, int], ...] = (
    (0.052, 8, 2),
    (0.117, 12, 2),
    (0.203, 16, 2),
    (0.246, 18, 2),
    (0.483, 21, 2),
    (0.655, 23, 2),
    (0.827, 25, 2),
    (1.000, 27, 6),
)

#: Runs per split: key -> (simulator method, merge strategy, label).
RUNS: dict[str, tuple[str, str, str]] = {
    "flextrain-pad": ("flextrain", "pad", "FedFlexTrain (pad)"),
    "flextrain-holder": ("flextrain", "holder-weighted", "FedFlexTrain (holder-weighted)"),
    "fedsmall": ("fedsmall", "", "FedSmall"),
    "fedclass": ("fedclass", "", "FedClass"),
    "flextrain-robust": ("flextrain", "robust", "FedFlexTrain (robust)"),
}
#: The runs of the paper's Table 4 (the default of --runs).
DEFAULT_RUNS: tuple[str, ...] = ("flextrain-pad", "flextrain-holder", "fedsmall", "fedclass")

BATCH_SIZE = 64  # the paper's
EVAL_BATCH_SIZE = 500


def map_tiers(arch: ArchProfile) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    """Paper tiers -> ``[(depth, devices)]`` on ``arch``; tiers landing on one depth merge."""
    counts: dict[int, int] = {}
    mapping = []
    for share, paper_k, devices in PAPER_TIERS:
        k = closest_depth_to_parameter_share(arch, share)
        counts[k] = counts.get(k, 0) + devices
        mapping.append(
            {
                "paper_share": share,
                "paper_depth": paper_k,
                "devices": devices,
                "depth": k,
                "params": arch.parameter_fraction(k),
                "macs": arch.mac_fraction(k),
            }
        )
    return sorted(counts.items()), mapping


def paper_bytes_share() -> dict[str, float]:
    """Mean upload per device of the paper's setting relative to the full model (analytic)."""
    arch = profile("resnet", 56, 100, 3, 32)
    devices = sum(d for _, _, d in PAPER_TIERS)
    params = sum(d * arch.parameter_fraction(k) for _, k, d in PAPER_TIERS) / devices
    state = sum(d * arch.state_bytes(k) for _, k, d in PAPER_TIERS) / devices
    return {"params": params, "state_bytes": state / arch.state_bytes()}


def final_accuracy(
    spec: ModelSpec,
    result: SimulationResult,
    method: str,
    tiers: list[tuple[int, int]],
    loader: Any,
) -> dict[int, float]:
    """Accuracy per tier on ``loader`` of the final global state(s) of ``result``.

    Each tier's devices are evaluated with their group's model at their evaluation depth
    (the device plans of ``flextrain.core.baselines``), as the simulator does per round.
    """
    plans = plan_devices(method, tiers)
    model = spec.build()
    out: dict[int, float] = {}
    for group, state in result.final_states.items():
        members = [p for p in plans if p.group == group]
        model.load_state_dict(state)
        acc = evaluate(model, loader, {p.eval_depth for p in members})
        for p in members:
            out[p.tier_depth] = acc[p.eval_depth]
    return out


def mean_device(accuracy: dict[int, float], tiers: list[tuple[int, int]]) -> float:
    """Mean over devices (tiers weighted by their device counts).

    Rounded to 12 digits so that equal tier accuracies give exactly that value (a table
    must not show 61.3 beside tiers of 61.4 from float error).
    """
    return round(sum(accuracy[k] * n for k, n in tiers) / sum(n for _, n in tiers), 12)


def skew(labels: np.ndarray, shards: list[np.ndarray], num_classes: int) -> dict[str, Any]:
    """How label-skewed a partition is: shard sizes and the dominant class's share."""
    counts = shard_label_counts(labels, shards, num_classes)
    sizes = counts.sum(axis=1)
    top = counts.max(axis=1) / np.maximum(sizes, 1)
    present = (counts >= 0.05 * sizes[:, None]).sum(axis=1)
    return {
        "sizes": sizes.tolist(),
        "size_min": int(sizes.min()),
        "size_max": int(sizes.max()),
        "top_class_share_mean": float(top.mean()),
        "classes_over_5pct_mean": float(present.mean()),
    }


def robust_strategy(args: argparse.Namespace) -> RobustMerge:
    """The robust merge the flags configure."""
    return RobustMerge(args.robust_method, args.trim_fraction, args.clip_multiple)


def robust_label(args: argparse.Namespace) -> str:
    """``trimmed-mean 0.2, clip 3x`` for the flags' robust merge."""
    merge = robust_strategy(args)
    words = [merge.method]
    if merge.method == "trimmed-mean":
        words[0] += f" {merge.trim_fraction:g}"
    words.append(f"clip {merge.clip_multiple:g}x" if merge.clip_multiple else "no clip")
    return ", ".join(words)


def run_split(
    split: str,
    args: argparse.Namespace,
    spec: ModelSpec,
    splits: Any,
    tiers: list[tuple[int, int]],
    curve_test: Any,
    final_loader: Any,
) -> dict[str, Any]:
    """All runs of one split, one after another (same partition, same seed)."""
    devices = sum(n for _, n in tiers)
    shards = partition(splits.train_labels, devices, split, args.alpha, seed=args.seed)
    info = skew(splits.train_labels, shards, splits.num_classes)
    log(
        f"[{split}] shards: sizes {info['size_min']}-{info['size_max']}, "
        f"dominant class share {info['top_class_share_mean']:.2f}, "
        f"classes >5 % {info['classes_over_5pct_mean']:.1f}"
    )
    results: dict[str, Any] = {"partition": info, "runs": {}}
    for key in args.runs:
        method, strategy, label = RUNS[key]
        strategy = strategy or args.baseline_strategy
        merger: str | MergeStrategy = strategy
        if strategy == "robust":
            merger = robust_strategy(args)
            label = f"{label[:-1]}: {robust_label(args)})"
        log(f"[{split}] {label} (merge {merger})")
        start = time.perf_counter()

        def progress(record: RoundRecord, key: str = key, start: float = start) -> None:
            acc = " ".join(f"k{k}={pct(v)}" for k, v in sorted(record.accuracy.items()))
            log(
                f"  [{split} {key}] round {record.round}/{args.rounds} "
                f"mean-device {pct(record.mean_device_accuracy)} % | {acc} | "
                f"train {record.train_s:.1f}s eval {record.eval_s:.1f}s "
                f"elapsed {time.perf_counter() - start:.0f}s"
            )

        result = simulate(
            spec,
            splits.train,
            curve_test,
            tiers,
            args.rounds,
            args.local_epochs,
            BATCH_SIZE,
            strategy=merger,
            method=method,
            partitions=shards,
            optimizer=PAPER_SGD,
            seed=args.seed,
            eval_batch_size=EVAL_BATCH_SIZE,
            progress=progress,
        )
        t0 = time.perf_counter()
        final = final_accuracy(spec, result, method, tiers, final_loader)
        final_eval_s = time.perf_counter() - t0
        up = [sum(r.bytes_up.values()) for r in result.rounds]
        full = devices * result.full_model_bytes
        results["runs"][key] = {
            "label": label,
            "method": method,
            "strategy": strategy,
            "strategy_options": repr(merger) if strategy == "robust" else None,
            "final_accuracy": {str(k): v for k, v in final.items()},
            "final_mean_device_accuracy": mean_device(final, tiers),
            "bytes_up_per_round": statistics.fmean(up),
            "bytes_up_share_of_fedavg": statistics.fmean(up) / full,
            "bytes_up_share_per_tier": {
                str(k): result.rounds[0].bytes_up[k] / (n * result.full_model_bytes)
                for k, n in tiers
            },
            "train_s": sum(r.train_s for r in result.rounds),
            "round_train_s_median": statistics.median(r.train_s for r in result.rounds),
            "eval_s": sum(r.eval_s for r in result.rounds),
            "final_eval_s": final_eval_s,
            "simulation": result.to_dict(),
        }
        log(
            f"  [{split} {key}] final (full test set) mean-device "
            f"{pct(mean_device(final, tiers))} % | "
            + " ".join(f"k{k}={pct(v)}" for k, v in sorted(final.items()))
        )
    return results


def report(
    args: argparse.Namespace,
    spec: ModelSpec,
    arch: ArchProfile,
    tiers: list[tuple[int, int]],
    mapping: list[dict[str, Any]],
    by_split: dict[str, Any],
    meta: dict[str, Any],
) -> str:
    devices = sum(n for _, n in tiers)
    paper_share = paper_bytes_share()
    lines = ["# Federated FlexTrain reproduction (paper Table 4), reduced scale", ""]
    lines += [
        f"Scale: {meta['dataset']}, {meta['train_examples']} training examples (stratified "
        f"subset, data seed 0) split over {devices} simulated devices; {args.rounds} rounds x "
        f"{args.local_epochs} local epoch(s), batch {BATCH_SIZE}, SGD lr {PAPER_SGD.lr} "
        f"(constant), momentum {PAPER_SGD.momentum} (reset every round), weight decay "
        f"{PAPER_SGD.weight_decay}, distillation beta 0.2 on probabilities, seed {args.seed}, "
        "one seed. Final accuracies on the full "
        f"{meta['test_examples']}-example test set; per-round curves on a stratified "
        f"{meta['curve_examples']}-example subset. Paper: CIFAR-10/100, ResNet-56, 160 rounds "
        "x 10 local epochs - only orderings and gaps are comparable.",
        "",
        f"Machine: {meta['machine']['cpu_count']} CPU cores, torch "
        f"{meta['machine']['torch']} with {meta['machine']['torch_threads']} threads, no GPU; "
        f"load average at start {meta['machine']['loadavg_1_5_15'][0]:.1f}, at end "
        f"{meta['loadavg_end'][0]:.1f} (runs are sequential; another benchmark may share "
        f"the machine, so wall times are noisy). Wall time of the whole benchmark: "
        f"{meta['wall_s']:.0f} s.",
        "",
        f"FedSmall and FedClass merge with `{args.baseline_strategy}` (every member of a "
        "group holds the same prefix, so this is plain FedAvg"
        + (
            ", weighted by examples)."
            if args.baseline_strategy == "holder-weighted"
            else ", uniform over devices)."
        ),
        "",
        "## Tiers: the paper's Table 3 mapped onto ResNet-" + str(spec.layers),
        "",
        markdown_table(
            [
                "paper r_j %",
                "paper k_j (ResNet-56)",
                "devices",
                "our k",
                "our params %",
                "our MACs %",
            ],
            [
                [
                    pct(m["paper_share"]),
                    m["paper_depth"],
                    m["devices"],
                    m["depth"],
                    pct(m["params"]),
                    pct(m["macs"]),
                ]
                for m in mapping
            ],
        ),
        "",
        "Tiers used (depth: devices): "
        + ", ".join(f"k={k}: {n}" for k, n in tiers)
        + " (paper tiers mapping to the same depth are merged). FedSmall trains every "
        f"device at k={tiers[0][0]}.",
        "",
    ]
    for split, data in by_split.items():
        part = data["partition"]
        title = "IID" if split == "iid" else f"Dirichlet alpha={args.alpha}"
        lines += [
            f"## {title} split",
            "",
            f"Shard sizes {part['size_min']}-{part['size_max']}; dominant class holds "
            f"{100 * part['top_class_share_mean']:.0f} % of a shard on average; "
            f"{part['classes_over_5pct_mean']:.1f} classes above 5 % per shard.",
            "",
        ]
        headers = ["method", "mean device acc %", *[f"k={k} (x{n})" for k, n in tiers]]
        headers += ["upload / FedAvg", "training s", "median s/round"]
        rows = []
        for run in data["runs"].values():
            acc = run["final_accuracy"]
            rows.append(
                [run["label"], pct(run["final_mean_device_accuracy"])]
                + [pct(acc[str(k)]) for k, _ in tiers]
                + [
                    f"{100 * run['bytes_up_share_of_fedavg']:.1f} %",
                    f"{run['train_s']:.0f}",
                    f"{run['round_train_s_median']:.1f}",
                ]
            )
        lines += [markdown_table(headers, rows), ""]
    flex = next(
        (
            run
            for data in by_split.values()
            for key, run in data["runs"].items()
            if key.startswith("flextrain")
        ),
        None,
    )
    lines += ["## Upload per round relative to full-model FedAvg", ""]
    if flex is not None:
        lines += [
            "FedFlexTrain, per tier (bytes a device of the tier uploads / full model state): "
            + ", ".join(
                f"k={k}: {100 * v:.1f} %" for k, v in flex["bytes_up_share_per_tier"].items()
            )
            + f"; mean over the {devices} devices {100 * flex['bytes_up_share_of_fedavg']:.1f} %"
            " (measured from the tensors the simulator moved, BatchNorm buffers included).",
            "",
        ]
    lines += [
        f"Paper setting (ResNet-56/100 classes, Table 3 tiers), analytic: "
        f"{100 * paper_share['params']:.1f} % by parameters (the paper's 55.8 %), "
        f"{100 * paper_share['state_bytes']:.1f} % by state-dict bytes.",
        "",
    ]
    return "\n".join(lines)


def plot(path: Any, by_split: dict[str, Any], tiers: list[tuple[int, int]]) -> None:
    """Per split: mean device accuracy vs round per method, and per-tier curves."""
    panels = ["mean", "flextrain-pad", "flextrain-holder", "fedclass"]
    fig, axes = plt.subplots(
        len(by_split),
        len(panels),
        figsize=(4.5 * len(panels), 3.8 * len(by_split)),
        squeeze=False,
    )
    for row, (split, data) in zip(axes, by_split.items(), strict=True):
        runs = data["runs"]
        for ax, panel in zip(row, panels, strict=True):
            if panel == "mean":
                for run in runs.values():
                    rounds = run["simulation"]["rounds"]
                    xs = [r["round"] for r in rounds if r["mean_device_accuracy"] is not None]
                    ys = [
                        100 * r["mean_device_accuracy"]
                        for r in rounds
                        if r["mean_device_accuracy"] is not None
                    ]
                    ax.plot(xs, ys, marker=".", label=run["label"])
                ax.set_title(f"{split}: mean device accuracy")
                ax.legend(fontsize=7)
            elif panel in runs:
                rounds = runs[panel]["simulation"]["rounds"]
                for k, _ in tiers:
                    xs = [r["round"] for r in rounds if str(k) in r["accuracy"]]
                    ys = [100 * r["accuracy"][str(k)] for r in rounds if str(k) in r["accuracy"]]
                    ax.plot(xs, ys, label=f"k={k}")
                ax.set_title(f"{split}: {runs[panel]['label']} per tier")
                ax.legend(fontsize=7, ncol=2)
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy % (curve subset)")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.reproduce_federated",
        description="Paper Table 4 (federated FlexTrain) at reduced scale.",
    )
    add_scale_arguments(p, NAME, limit=10000, curve_limit=1000, curve_unit="round")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 10)")
    p.add_argument("--local-epochs", type=int, default=None, help="local epochs (default 1)")
    p.add_argument("--split", default="iid,dirichlet", help="comma-separated: iid, dirichlet")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration")
    p.add_argument(
        "--runs",
        default=",".join(DEFAULT_RUNS),
        help=f"subset of {','.join(RUNS)} (default {','.join(DEFAULT_RUNS)})",
    )
    p.add_argument(
        "--robust-method",
        default="trimmed-mean",
        choices=ROBUST_METHODS,
        help="statistic of the flextrain-robust run (default trimmed-mean)",
    )
    p.add_argument(
        "--trim-fraction",
        type=float,
        default=None,
        help="share trimmed from each end by flextrain-robust's trimmed mean (default 0.2)",
    )
    p.add_argument(
        "--clip-multiple",
        type=float,
        default=DEFAULT_CLIP_MULTIPLE,
        help="flextrain-robust's clipping bound, a multiple of the median update norm; "
        f"0: no clipping (default {DEFAULT_CLIP_MULTIPLE:g})",
    )
    p.add_argument(
        "--baseline-strategy",
        default="holder-weighted",
        choices=STRATEGIES,
        help="merge of FedSmall/FedClass (default holder-weighted = example-weighted FedAvg)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    defaults = {
        "rounds": (2, 10),
        "local_epochs": (1, 1),
        "limit": (1000, 10000),
        "curve_limit": (500, 1000),
    }
    fill_defaults(args, defaults)
    args.split = csv_list(args.split)
    if any(s not in ("iid", "dirichlet") for s in args.split):
        p.error("--split takes iid and/or dirichlet")
    args.runs = csv_list(args.runs)
    if any(r not in RUNS for r in args.runs):
        p.error(f"--runs takes a subset of {list(RUNS)}")
    try:
        robust_strategy(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup = begin(args, NAME)
    start, info, out, splits, spec = setup.start, setup.machine, setup.out, setup.splits, setup.spec
    arch = spec.profile()
    tiers, mapping = map_tiers(arch)
    n_curve = min(args.curve_limit, len(splits.test_labels))
    curve_idx = stratified_subset(splits.test_labels, n_curve, 0)
    curve_test = torch.utils.data.TensorDataset(
        splits.test.images[curve_idx], splits.test.labels[curve_idx]
    )
    final_loader = make_loader(splits.test, batch_size=EVAL_BATCH_SIZE)
    log(
        f"federated reproduction: {args.dataset}, {len(splits.train_labels)} train / "
        f"{len(splits.test_labels)} test examples, ResNet-{args.layers}, tiers {tiers}, "
        f"{args.rounds} rounds x {args.local_epochs} local epoch(s), splits {args.split}, "
        f"torch threads {torch.get_num_threads()}"
    )
    by_split = {
        split: run_split(split, args, spec, splits, tiers, curve_test, final_loader)
        for split in args.split
    }
    meta = {
        "dataset": args.dataset,
        "train_examples": len(splits.train_labels),
        "test_examples": len(splits.test_labels),
        "curve_examples": n_curve,
        "machine": info,
        "loadavg_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - start,
        "command": " ".join(["python -m benchmarks.reproduce_federated", *(argv or sys.argv[1:])]),
    }
    markdown = report(args, spec, arch, tiers, mapping, by_split, meta)
    plot_path = out / f"{NAME}.png"
    plot(plot_path, by_split, tiers)
    data = {
        "meta": meta,
        "args": vars(args),
        "tiers": tiers,
        "tier_mapping": mapping,
        "paper_bytes_share": paper_bytes_share(),
        "splits": by_split,
    }
    md_path, json_path = write_outputs(out, NAME, markdown, data)
    print(markdown, flush=True)
    log(f"wrote {md_path}, {json_path}, {plot_path} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
