"""Reproduce the paper's Table 4 (federated FlexTrain) at reduced scale.

FlexTrain (arXiv 2310.20457, Sec. 5.2, Tables 3 and 4) compares the mean device test
accuracy of Federated FlexTrain with FedSmall (FedAvg of the model the weakest device
can hold, on all devices) and FedClass (one FedAvg model per tier) over 20 devices in 8
tiers. This benchmark runs that comparison with ``flextrain.core.simulator.simulate``
on Fashion-MNIST with a ResNet-20 backbone (K = 9), the paper's tiers mapped by
parameter share onto ResNet-20's depths, for an IID and a Dirichlet label-skewed split
(``flextrain.data.partition``), and with both server merges: the paper's ``pad`` and
``holder-weighted``. ``--runs flextrain-pad,flextrain-robust`` compares the paper's merge
with the robust one (``--robust-method``, ``--trim-fraction``, ``--clip-multiple``);
``flextrain-tier`` runs the benchmark-only tier-balanced merge
(:mod:`flextrain.core.merge.tier_balanced`).

Seeds and splits: ``--seeds 0,1,2`` (or ``--seeds 3``) and ``--split iid,dir0.5,dir0.1``
run every (seed, split) pair; each writes one JSON file,
``<out>/runs/<variant>/<split>/seed<seed>.json``, with the git commit and the command
line that produced it. A seed fixes the model initialisation, the partition and the
devices' batch order; the training subset is the same for every seed (data seed 0).
``--pool-at-prefix`` and ``--stage-adapters`` set the model's research options
(:mod:`flextrain.core.models`) for every run of the invocation, baselines included;
``--beta`` sets the distillation weight (the baselines do not distil); the variant
directory is named after them (``paper`` without). After the runs the
report step (:mod:`benchmarks.reproduce_report`) aggregates every JSON file under
``<out>/runs`` into mean ± sample std over seeds and states the claims its rule allows.

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
    parse_seeds,
    pct,
    provenance,
    write_json,
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
from flextrain.core.losses import ANCHOR_LOSSES, ANCHOR_TIERS, DEFAULT_BETA
from flextrain.core.merge import (
    ROBUST_METHODS,
    STRATEGIES,
    MergeStrategy,
    RobustMerge,
)
from flextrain.core.merge.robust import DEFAULT_CLIP_MULTIPLE
from flextrain.core.merge.tier_balanced import TierBalancedMerge
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
    "flextrain-tier": ("flextrain", "tier-balanced", "FedFlexTrain (tier-balanced)"),
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


def parse_split(text: str, default_alpha: float) -> tuple[str, str, float | None]:
    """``iid`` / ``dir0.5`` / ``dirichlet`` (alpha ``default_alpha``) ->
    ``(name, scheme, alpha)``; the name is the split's directory and table label."""
    if text == "iid":
        return "iid", "iid", None
    if text == "dirichlet":
        alpha = default_alpha
    elif text.startswith("dir"):
        try:
            alpha = float(text.removeprefix("dir"))
        except ValueError:
            raise ValueError(f"split {text!r}: dir takes a concentration, e.g. dir0.5") from None
    else:
        raise ValueError(f"unknown split {text!r}; allowed: iid, dir<alpha> (dir0.5), dirichlet")
    if not (alpha > 0 and alpha < float("inf")):
        raise ValueError(f"split {text!r}: the Dirichlet concentration must be > 0")
    return f"dir{alpha:g}", "dirichlet", alpha


def variant_name(
    options: dict[str, int],
    beta: float = DEFAULT_BETA,
    anchor: str = "none",
    anchor_tiers: str = "weakest",
) -> str:
    """``paper`` for the paper's model and β, else the research options set (with their
    value when it is not 1: ``stage_adapters2`` = affine adapters), a ``beta<value>``
    for another distillation weight and ``anchor-<loss>`` for ``--anchor``
    (``anchor-<loss>-all`` with ``--anchor-tiers all``), joined by ``+``."""
    on = sorted(
        name if value == 1 else f"{name}{value}" for name, value in options.items() if value
    )
    if beta != DEFAULT_BETA:
        on.append(f"beta{beta:g}")
    if anchor != "none":
        on.append(f"anchor-{anchor}" + ("-all" if anchor_tiers == "all" else ""))
    return "+".join(on) if on else "paper"


def run_split(
    split: str,
    args: argparse.Namespace,
    spec: ModelSpec,
    splits: Any,
    tiers: list[tuple[int, int]],
    curve_test: Any,
    final_loader: Any,
    seed: int = 0,
) -> dict[str, Any]:
    """All runs of one split and seed, one after another (same partition, same seed)."""
    devices = sum(n for _, n in tiers)
    _, scheme, alpha = parse_split(split, args.alpha)
    shards = partition(splits.train_labels, devices, scheme, alpha, seed=seed)
    info = skew(splits.train_labels, shards, splits.num_classes)
    log(
        f"[{split}] shards: sizes {info['size_min']}-{info['size_max']}, "
        f"dominant class share {info['top_class_share_mean']:.2f}, "
        f"classes >5 % {info['classes_over_5pct_mean']:.1f}"
    )
    results: dict[str, Any] = {
        "partition": info,
        "scheme": scheme,
        "alpha": alpha,
        "seed": seed,
        "runs": {},
    }
    for key in args.runs:
        method, strategy, label = RUNS[key]
        strategy = strategy or args.baseline_strategy
        merger: str | MergeStrategy = strategy
        if strategy == "robust":
            merger = robust_strategy(args)
            label = f"{label[:-1]}: {robust_label(args)})"
        elif strategy == TierBalancedMerge.name:  # benchmark-only, not in the registry
            merger = TierBalancedMerge()
        log(f"[{split}] {label} (merge {strategy})")
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
            beta=args.beta,
            anchor_loss=args.anchor if method == "flextrain" else "none",
            anchor_tiers=args.anchor_tiers,
            seed=seed,
            eval_batch_size=EVAL_BATCH_SIZE,
            progress=progress,
        )
        wall_s = time.perf_counter() - start
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
            "wall_s": wall_s + final_eval_s,
            "full_model_bytes": result.full_model_bytes,
            "simulation": result.to_dict(),
        }
        log(
            f"  [{split} {key}] final (full test set) mean-device "
            f"{pct(mean_device(final, tiers))} % | "
            + " ".join(f"k{k}={pct(v)}" for k, v in sorted(final.items()))
        )
    return results


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
    p.add_argument(
        "--split",
        default=None,
        help="comma-separated splits: iid, dir<alpha> (Dirichlet label skew of concentration "
        "alpha, e.g. dir0.5; smaller is more skewed), dirichlet (= dir<--alpha>) "
        "(default iid,dir0.5,dir0.1; --quick: iid,dir0.5)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="concentration of the split 'dirichlet'"
    )
    p.add_argument(
        "--seeds",
        default=None,
        help="a count (3 = seeds 0,1,2) or a comma-separated list (0,1,2; one seed: 4,); "
        "default 3 (--quick: 1)",
    )
    p.add_argument(
        "--pool-at-prefix",
        action="store_true",
        help="model option: a shallow prefix is pooled at its own resolution (every run)",
    )
    p.add_argument(
        "--stage-adapters",
        nargs="?",
        const="linear",
        default=None,
        choices=("linear", "affine"),
        help="model option: per-stage adapters in the shared head (every run): linear "
        "(C_s -> 64, 3,072 values; the default of the bare flag) or affine (a scale and "
        "shift per channel, 96 values)",
    )
    p.add_argument(
        "--beta",
        type=float,
        default=DEFAULT_BETA,
        help=f"distillation weight of the FlexTrain runs (default {DEFAULT_BETA}, the paper's; "
        "0: no distillation); another value names the model directory",
    )
    p.add_argument(
        "--anchor",
        default="none",
        choices=ANCHOR_LOSSES,
        help="research option of the FlexTrain runs: every deeper device also trains the "
        "weakest tier's prefix, by distillation from its own output (distill) or by that "
        "and cross-entropy on its labels (ce); default none (the paper's loss); another "
        "value names the model directory",
    )
    p.add_argument(
        "--anchor-tiers",
        default="weakest",
        choices=ANCHOR_TIERS,
        help="with --anchor: the weakest tier's depth (default) or every tier depth below "
        "the device's own (all; the loss adds the mean of their terms)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a (seed, split) whose JSON file exists (resume an interrupted run)",
    )
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
    p.add_argument("--seed", type=int, default=None, help="one seed (= --seeds SEED,)")
    args = p.parse_args(argv)
    defaults = {
        "rounds": (2, 10),
        "local_epochs": (1, 1),
        "limit": (1000, 10000),
        "curve_limit": (500, 1000),
    }
    fill_defaults(args, defaults)
    if args.seed is not None and args.seeds is not None:
        p.error("give --seeds or --seed, not both")
    if args.seed is not None:
        args.seeds = f"{args.seed},"
    try:
        args.seeds = parse_seeds(args.seeds or ("1" if args.quick else "3"))
        args.split = csv_list(args.split or ("iid,dir0.5" if args.quick else "iid,dir0.5,dir0.1"))
        names = [parse_split(s, args.alpha)[0] for s in args.split]
    except ValueError as exc:
        p.error(str(exc))
    if not args.split or len(set(names)) != len(names):
        p.error(f"--split names each split once, got {args.split}")
    args.runs = csv_list(args.runs)
    if any(r not in RUNS for r in args.runs):
        p.error(f"--runs takes a subset of {list(RUNS)}")
    if not (0.0 <= args.beta < float("inf")):
        p.error(f"--beta must be a finite number >= 0, got {args.beta}")
    try:
        robust_strategy(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here: the report module imports this one for its constants.
    from benchmarks.reproduce_report import federated_report

    args = parse_args(argv)
    origin = provenance(argv, "benchmarks.reproduce_federated")
    options = {
        "pool_at_prefix": int(args.pool_at_prefix),
        "stage_adapters": {None: 0, "linear": 1, "affine": 2}[args.stage_adapters],
    }
    variant = variant_name(options, args.beta, args.anchor, args.anchor_tiers)
    setup = begin(args, NAME)
    start, info, out, splits, base = setup.start, setup.machine, setup.out, setup.splits, setup.spec
    spec = ModelSpec(
        base.family, base.layers, base.num_classes, base.in_channels, base.image_size, options
    )
    arch = spec.profile()
    # Tiers by the paper model's shares, so that every model variant has the same
    # devices (the adapters would shift every share by their 3,072 parameters).
    tiers, mapping = map_tiers(base.profile())
    n_curve = min(args.curve_limit, len(splits.test_labels))
    curve_idx = stratified_subset(splits.test_labels, n_curve, 0)
    curve_test = torch.utils.data.TensorDataset(
        splits.test.images[curve_idx], splits.test.labels[curve_idx]
    )
    final_loader = make_loader(splits.test, batch_size=EVAL_BATCH_SIZE)
    log(
        f"federated reproduction: {args.dataset}, {len(splits.train_labels)} train / "
        f"{len(splits.test_labels)} test examples, ResNet-{args.layers} ({variant}), tiers "
        f"{tiers}, {args.rounds} rounds x {args.local_epochs} local epoch(s), splits "
        f"{args.split}, seeds {args.seeds}, torch threads {torch.get_num_threads()}"
    )
    written: list[Any] = []
    first: dict[str, Any] = {}
    for seed in args.seeds:
        for split in args.split:
            name = parse_split(split, args.alpha)[0]
            path = out / "runs" / variant / name / f"seed{seed}.json"
            if args.skip_existing and path.exists():
                log(f"[{name} seed {seed}] {path} exists: skipped")
                written.append(path)
                continue
            t0 = time.perf_counter()
            data = run_split(split, args, spec, splits, tiers, curve_test, final_loader, seed)
            first.setdefault(name, data)
            record = {
                "kind": NAME,
                "provenance": origin,
                "variant": variant,
                "model_options": options,
                "seed": seed,
                "split": name,
                "dataset": args.dataset,
                "train_examples": len(splits.train_labels),
                "test_examples": len(splits.test_labels),
                "curve_examples": n_curve,
                "layers": args.layers,
                "rounds": args.rounds,
                "local_epochs": args.local_epochs,
                "batch_size": BATCH_SIZE,
                "baseline_strategy": args.baseline_strategy,
                "beta": args.beta,
                "anchor_loss": args.anchor,
                "anchor_tiers": args.anchor_tiers,
                "args": {k: v for k, v in vars(args).items()},
                "machine": info,
                "loadavg_end": list(os.getloadavg()),
                "wall_s": time.perf_counter() - t0,
                "tiers": tiers,
                "tier_mapping": mapping,
                "parameters": arch.parameters(),
                "paper_bytes_share": paper_bytes_share(),
                **data,
            }
            written.append(write_json(path, record))
            log(f"[{name} seed {seed}] wrote {path} ({record['wall_s']:.0f} s)")
    markdown = federated_report(written)
    plot_path = out / f"{NAME}.png"
    if first:
        plot(plot_path, first, tiers)
    md_path, json_path = write_outputs(
        out,
        NAME,
        markdown,
        {
            "provenance": origin,
            "files": [str(p) for p in written],
            "wall_s": time.perf_counter() - start,
        },
    )
    print(markdown, flush=True)
    log(
        f"wrote {md_path}, {json_path}, {plot_path} and {len(written)} run file(s) in "
        f"{time.perf_counter() - start:.0f} s; all runs under {out / 'runs'}: "
        f"python -m benchmarks.reproduce_report --federated {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
