"""Reproduce the paper's Table 1 (centralised FlexTrain) at reduced scale.

FlexTrain (arXiv 2310.20457, Table 1) compares, at three depths of one ResNet, test
accuracy of *Independent* (one model per depth), *FlexTrain* (one shared model, a
depth drawn per mini-batch) and *Single* (the full model, evaluated truncated). This
benchmark runs that comparison with ``flextrain.core`` on Fashion-MNIST with a
ResNet-20 backbone (K = 9 blocks) and adds two ablations the paper does not have:
FlexTrain without auto-distillation (beta 0) and with the literal logits target.

Two Independent baselines, named apart in every table:

* ``standalone`` -- "Independent (standalone ResNet)", the paper's: for each depth a
  separate CIFAR ResNet with all three stages and n blocks per stage, n (at most the
  backbone's) chosen so that its parameter count is closest to the prefix's (both
  counts are printed). On a ResNet-56 backbone that gives ResNet-20 for the ~35 %
  prefix; on the default ResNet-20 backbone the only smaller choices are n = 1
  (ResNet-8, 27.8 %) and n = 2 (ResNet-14, 63.8 %), so both smaller prefixes (17.6 and
  45.1 %) are compared with ResNet-8, trained once per seed.
* ``independent`` -- "Independent (prefix alone)": the depth-k prefix of the same
  backbone trained alone (its architecture is exactly the prefix's).

``--seeds 0,1,2`` (or ``--seeds 3``) runs every method once per seed; each seed writes
``<out>/runs/seed<seed>.json`` with the git commit and command line, and the report
(:mod:`benchmarks.reproduce_report`) aggregates every seed file under ``<out>/runs``
into mean ± sample std over seeds and the claims its rule allows.

It also reports the cost claims: the analytic parameter and multiply-add ratios of one
FlexTrain run vs Single and vs the independent models, and the *measured* wall-clock
ratios, (a) from the full runs (evaluation time subtracted) and (b) from short timing
blocks of equal step counts, interleaved method by method and repeated, which is the
robust number on a shared, noisy machine.

Run ``python -m benchmarks.reproduce_centralised --help``. Only orderings and gaps are
comparable to the paper: fewer epochs, a smaller backbone, another dataset.
"""

from __future__ import annotations

# First: sets OMP_WAIT_POLICY before torch loads OpenMP (see its docstring).
from benchmarks.reproduce_common import (
    TimedLoader,
    add_scale_arguments,
    begin,
    csv_list,
    fill_defaults,
    log,
    markdown_table,
    mean_std,
    parse_seeds,
    pct,
    pct_pm,
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from flextrain.core.arch import ArchProfile, closest_depth_to_parameter_share, profile
from flextrain.core.centralised import (
    DepthSampler,
    evaluate,
    train_fixed_depth,
    train_flextrain,
    train_single,
)
from flextrain.core.losses import DEFAULT_BETA, TrainingDiverged
from flextrain.core.models import FlexResNet, ModelSpec, trainable_parameter_count
from flextrain.core.optim import PAPER_SGD, OptimizerConfig
from flextrain.data import make_loader, stratified_subset

NAME = "centralised"

#: Method keys, in run order, and their table labels.
METHODS: dict[str, str] = {
    "standalone": "Independent (standalone ResNet)",
    "independent": "Independent (prefix alone)",
    "flextrain": f"FlexTrain (β={DEFAULT_BETA}, probs)",
    "flextrain-nodistill": "FlexTrain (β=0)",
    "flextrain-logits": f"FlexTrain (β={DEFAULT_BETA}, logits)",
    "single": "Single (truncated)",
}

#: FlexTrain variants: (beta, distillation target).
FLEX_VARIANTS: dict[str, tuple[float, str]] = {
    "flextrain": (DEFAULT_BETA, "probs"),
    "flextrain-nodistill": (0.0, "probs"),
    "flextrain-logits": (DEFAULT_BETA, "logits"),
}

#: The paper's parameter shares of the two smaller prefixes of its depth distribution.
PAPER_SHARES: tuple[float, float] = (0.15, 0.35)

BATCH_SIZE = 64  # the paper's
EVAL_BATCH_SIZE = 500


# -- analytic cost -----------------------------------------------------------------------


def analytic_costs(arch: ArchProfile, pi: dict[int, float]) -> dict[str, float]:
    """Cost of one FlexTrain step relative to Single and to the independent models.

    Per example and step, training a depth-k prefix costs its parameters (the paper's
    reading) or 3 x its forward multiply-adds (forward + backward, the usual 1:2 rule).
    Auto-distillation also runs the teacher's one extra block forward (no backward).
    "vs independent" = FlexTrain / (sum over pi's depths of one model each), all trained
    for the same number of steps.
    """
    k_max = arch.num_blocks
    depths = sorted(pi)
    p_full, m_full = arch.parameters(), arch.macs()
    flex_p = sum(p * arch.parameters(k) for k, p in pi.items()) / p_full
    flex_m = sum(p * arch.macs(k) for k, p in pi.items()) / m_full
    ind_p = sum(arch.parameters(k) for k in depths) / p_full
    ind_m = sum(arch.macs(k) for k in depths) / m_full
    teacher = sum(p * arch.blocks[k].macs for k, p in pi.items() if k < k_max) / m_full
    flex_m_distill = flex_m + teacher / 3
    return {
        "params_vs_single": flex_p,
        "params_vs_independent": flex_p / ind_p,
        "macs_vs_single": flex_m,
        "macs_vs_independent": flex_m / ind_m,
        "macs_distill_vs_single": flex_m_distill,
        "macs_distill_vs_independent": flex_m_distill / ind_m,
    }


def paper_vs_standalone() -> dict[str, float]:
    """The paper's FlexTrain step vs standalone ResNet-56 + ResNet-20 + ResNet-8 (CIFAR-100)."""
    a56, a20, a8 = (profile("resnet", n, 100, 3, 32) for n in (56, 20, 8))
    flex = analytic_costs(a56, paper_pi(a56))
    params = 1 + (a20.parameters() + a8.parameters()) / a56.parameters()
    macs = 1 + (a20.macs() + a8.macs()) / a56.macs()
    return {
        "params": flex["params_vs_single"] / params,
        "macs": flex["macs_vs_single"] / macs,
    }


def paper_pi(arch: ArchProfile) -> dict[int, float]:
    """The paper's pi on ``arch`` (via the library's DepthSampler)."""
    sampler = DepthSampler.paper_default(arch)
    return dict(zip(sampler.depths, sampler.probs, strict=True))


def standalone_matches(spec: ModelSpec, depths: Sequence[int]) -> dict[int, dict[str, int]]:
    """For each prefix depth, the standalone ResNet of closest parameter count.

    Candidates: all three stages, n blocks per stage for n = 1 .. the backbone's n
    (ties: the smaller n). ``{depth: {"n", "layers", "params", "prefix_params"}}``.
    Prefixes are counted without the research options (the paper's model).
    """
    spec = ModelSpec(spec.family, spec.layers, spec.num_classes, spec.in_channels, spec.image_size)
    backbone = spec.build()
    assert isinstance(backbone, FlexResNet)
    counts = {
        n: trainable_parameter_count(
            FlexResNet(spec.layers, spec.num_classes, spec.in_channels, stage_blocks=(n, n, n))
        )
        for n in range(1, backbone.stage_blocks[0] + 1)
    }
    arch = spec.profile()
    out: dict[int, dict[str, int]] = {}
    for k in depths:
        prefix = arch.parameters(k)
        n = min(counts, key=lambda m: (abs(counts[m] - prefix), m))
        out[k] = {"n": n, "layers": 6 * n + 2, "params": counts[n], "prefix_params": prefix}
    return out


def build_standalone(spec: ModelSpec, n: int) -> FlexResNet:
    """The standalone ResNet with ``n`` blocks per stage, same classes and input."""
    return FlexResNet(spec.layers, spec.num_classes, spec.in_channels, stage_blocks=(n, n, n))


# -- runs --------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run (one method, one seed; Independent: one depth)."""

    method: str
    seed: int
    #: Depths evaluated per epoch (Independent: its own depth).
    depths: list[int]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    train_s: float = 0.0
    eval_s: float = 0.0
    #: Final test accuracy on the full test set, ``{depth: acc}``.
    final: dict[int, float] = field(default_factory=dict)
    #: ``None`` or a description of the divergence.
    diverged: str | None = None
    #: Standalone baseline only: the model trained (``n``, ``layers``, ``params``).
    standalone: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "depths": self.depths,
            "standalone": self.standalone,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "final_accuracy": {str(k): v for k, v in self.final.items()},
            "diverged": self.diverged,
            "epochs": [
                {**r, "accuracy": {str(k): v for k, v in r.get("accuracy", {}).items()}}
                for r in self.epochs
            ],
        }


def _progress(
    run: Run, timed: TimedLoader[Any], total_epochs: int
) -> Callable[[int, dict[str, Any]], None]:
    """A progress callback: store the record and its evaluation time, print one line."""
    start = time.perf_counter()

    def progress(_epoch: int, record: dict[str, Any]) -> None:
        eval_s = timed.take()
        run.epochs.append({**record, "eval_s": eval_s})
        run.eval_s += eval_s
        acc = " ".join(f"k{k}={pct(v)}" for k, v in sorted(record.get("accuracy", {}).items()))
        log(
            f"  [{run.method} seed {run.seed}] epoch {len(run.epochs)}/{total_epochs} "
            f"loss {record['loss']:.3f} (distill {record['distill']:.4f}) acc% {acc} "
            f"elapsed {time.perf_counter() - start:.0f}s"
        )

    return progress


def schedule(epochs: int, decay_epochs: int, factor: float) -> list[tuple[OptimizerConfig, int]]:
    """``[(optimiser, epochs), ...]``: the paper's SGD, then its lr x ``factor`` at the end.

    The paper gives no schedule. With a constant lr of 0.05 the test accuracy of these
    short runs swings by up to ~25 points from one epoch to the next, so the final
    ``decay_epochs`` (at most ``epochs - 1``) run at a lower lr.
    """
    decay = max(0, min(decay_epochs, epochs - 1))
    stages = [(PAPER_SGD, epochs - decay)]
    if decay:
        stages.append((replace(PAPER_SGD, lr=PAPER_SGD.lr * factor), decay))
    return stages


def _train(
    method: str,
    model: FlexResNet,
    batches: Any,
    config: OptimizerConfig,
    epochs: int,
    seed: int,
    *,
    pi: dict[int, float],
    depths: list[int],
    curve: TimedLoader[Any] | None = None,
    progress: Callable[[int, dict[str, Any]], None] | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """One call of the library's training function of ``method`` (``fixed-k<k>``: depth k)."""
    common: dict[str, Any] = {
        "seed": seed,
        "eval_loader": curve,
        "progress": progress,
        "max_steps_per_epoch": max_steps,
    }
    if method == "single":
        return train_single(model, batches, config, epochs, eval_depths=depths, **common)
    if method.startswith("fixed-k"):
        k = int(method.removeprefix("fixed-k"))
        return train_fixed_depth(model, batches, k, config, epochs, eval_depths=[k], **common)
    beta, target = FLEX_VARIANTS[method]
    return train_flextrain(
        model,
        batches,
        pi,
        config,
        epochs,
        beta=beta,
        distill_target=target,
        eval_depths=depths,
        **common,
    )


def _staged(
    stages: list[tuple[OptimizerConfig, int]],
    train_stage: Callable[[OptimizerConfig, int, int], dict[str, Any]],
    seed: int,
) -> float:
    """Run the library's training function once per stage on the same model and loader.

    ``train_stage(config, epochs, seed)``; each call builds a new optimiser (momentum
    restarts at the lr drop). Later stages get their own seed, so FlexTrain's depth draws
    do not repeat. Returns the summed ``wall_s`` (evaluation included).
    """
    return sum(
        float(train_stage(config, n, seed + 100_003 * i)["wall_s"])
        for i, (config, n) in enumerate(stages)
    )


def run_seed(
    seed: int,
    spec: ModelSpec,
    train: Any,
    curve: TimedLoader[Any],
    final_loader: Any,
    pi: dict[int, float],
    depths: list[int],
    stages: list[tuple[OptimizerConfig, int]],
    methods: Sequence[str],
) -> list[Run]:
    """All methods for one seed, one after another; same seed, same batch order.

    Independent runs :func:`train_fixed_depth` on a fresh model per depth (what
    ``train_independent`` does; it takes one optimiser for the whole run) and shares
    one batch stream across the depths, as ``train_independent`` does. Standalone
    trains each distinct matching ResNet (:func:`standalone_matches`) once, at its full
    depth, and reports it in every row it matches.
    """
    all_depths = list(range(1, spec.num_blocks + 1))
    epochs = sum(n for _, n in stages)
    matches = standalone_matches(spec, depths)
    runs: list[Run] = []
    for method in methods:
        log(f"[seed {seed}] {METHODS[method]}")
        batches = make_loader(train, batch_size=BATCH_SIZE, shuffle=True, seed=seed)
        # (training key, rows of the tables, the model's own evaluation depth, n or None)
        jobs: list[tuple[str, list[int], list[int], int | None]]
        if method == "independent":
            jobs = [(f"fixed-k{k}", [k], [k], None) for k in depths]
        elif method == "standalone":
            by_n: dict[int, list[int]] = {}
            for k in depths:
                by_n.setdefault(matches[k]["n"], []).append(k)
            jobs = [(f"fixed-k{3 * n}", rows, [3 * n], n) for n, rows in sorted(by_n.items())]
        else:
            jobs = [(method, list(depths), list(depths), None)]
        for key, run_depths, own_depths, n in jobs:
            run = Run(method, seed, run_depths)
            torch.manual_seed(seed)
            if n is None:
                model = spec.build()
            else:
                model = build_standalone(spec, n)
                run.standalone = {
                    "n": n,
                    "layers": 6 * n + 2,
                    "params": trainable_parameter_count(model),
                }
                log(f"  standalone ResNet-{6 * n + 2} for depth(s) {run_depths}")
            stage = partial(
                _train,
                key,
                model,
                batches,
                pi=pi,
                depths=own_depths,
                curve=curve,
                progress=_progress(run, curve, epochs),
            )
            try:
                wall_s = _staged(stages, stage, seed)
            except TrainingDiverged as err:
                curve.take()
                run.diverged = f"epoch {len(run.epochs) + 1}: {err}"
                log(f"  [{method} seed {seed}] DIVERGED: {run.diverged}")
                runs.append(run)
                continue
            run.train_s = wall_s - run.eval_s
            if method == "standalone":
                acc = evaluate(model, final_loader, own_depths)[own_depths[0]]
                run.final = dict.fromkeys(run_depths, acc)
                for record in run.epochs:  # curves keyed by the rows, as for the others
                    got = record.get("accuracy", {}).get(own_depths[0])
                    if got is not None:
                        record["accuracy"] = dict.fromkeys(run_depths, got)
            else:
                run.final = evaluate(
                    model, final_loader, run_depths if method == "independent" else all_depths
                )
            runs.append(run)
    return runs


# -- interleaved timing ----------------------------------------------------------------------


def timing_blocks(
    spec: ModelSpec,
    train: Any,
    pi: dict[int, float],
    depths: list[int],
    steps: int,
    repeats: int,
) -> dict[str, Any]:
    """Seconds per training step of each method, measured in interleaved blocks.

    Each repeat runs ``steps`` steps of: FlexTrain (beta 0.2 probs), FlexTrain (beta 0),
    one fixed-depth run per depth (the independent models) and Single, in an order
    rotated per repeat, through the library's training functions (no evaluation). The
    ratios are formed within a repeat, so slow phases of a shared machine hit both
    sides of a ratio; the median over repeats is reported.
    """
    keys = ["flextrain", "flextrain-nodistill", *[f"fixed-k{k}" for k in depths], "single"]

    def one(key: str, seed: int, n: int) -> tuple[float, dict[int, int]]:
        torch.manual_seed(seed)
        model = spec.build()
        loader = make_loader(train, batch_size=BATCH_SIZE, shuffle=True, seed=seed)
        h = _train(key, model, loader, PAPER_SGD, 1, seed, pi=pi, depths=depths, max_steps=n)
        return h["wall_s"] / h["steps"], h["epochs"][0]["depth_counts"]

    for key in keys:  # warm-up: first calls allocate and pick kernels
        one(key, 0, 2)
    per_step: dict[str, list[float]] = {k: [] for k in keys}
    mix: dict[int, int] = {}
    ratio_ind: list[float] = []
    ratio_single: list[float] = []
    ratio_ind_nd: list[float] = []
    ratio_single_nd: list[float] = []
    for rep in range(repeats):
        order = keys[rep % len(keys) :] + keys[: rep % len(keys)]
        got: dict[str, float] = {}
        for key in order:
            got[key], counts = one(key, 1000 + rep, steps)
            per_step[key].append(got[key])
            if key == "flextrain":
                for k, c in counts.items():
                    mix[k] = mix.get(k, 0) + c
        ind = sum(got[f"fixed-k{k}"] for k in depths)
        ratio_ind.append(got["flextrain"] / ind)
        ratio_single.append(got["flextrain"] / got["single"])
        ratio_ind_nd.append(got["flextrain-nodistill"] / ind)
        ratio_single_nd.append(got["flextrain-nodistill"] / got["single"])
        log(
            f"  timing repeat {rep + 1}/{repeats}: "
            + " ".join(f"{k}={1000 * v:.0f}ms" for k, v in got.items())
            + f" -> flex/ind {ratio_ind[-1]:.2f} flex/single {ratio_single[-1]:.2f}"
        )
    total = sum(mix.values())
    return {
        "steps_per_block": steps,
        "repeats": repeats,
        "seconds_per_step": per_step,
        "flextrain_depth_mix": {str(k): c / total for k, c in sorted(mix.items())},
        "ratio_vs_independent": ratio_ind,
        "ratio_vs_single": ratio_single,
        "nodistill_ratio_vs_independent": ratio_ind_nd,
        "nodistill_ratio_vs_single": ratio_single_nd,
    }


# -- report ----------------------------------------------------------------------------------


def _accs(runs: list[Run], method: str, depth: int) -> list[float]:
    return [
        r.final[depth] for r in runs if r.method == method and depth in r.final and not r.diverged
    ]


def _cell(runs: list[Run], method: str, depth: int) -> str:
    mine = [r for r in runs if r.method == method and depth in r.depths]
    diverged = [r for r in mine if r.diverged]
    text = pct_pm(_accs(runs, method, depth))
    if diverged:
        note = f"diverged in {len(diverged)}/{len(mine)} seeds"
        return note if text == "-" else f"{text} ({note})"
    return text


def _med(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


def report(
    args: argparse.Namespace,
    spec: ModelSpec,
    arch: ArchProfile,
    pi: dict[int, float],
    depths: list[int],
    runs: list[Run],
    timing: dict[str, Any] | None,
    meta: dict[str, Any],
) -> str:
    k_max = spec.num_blocks
    lines: list[str] = ["# Centralised FlexTrain reproduction (paper Table 1), reduced scale", ""]
    lines += [
        f"Scale: {meta['dataset']} with {meta['train_examples']} training examples "
        f"(stratified subset, data seed 0) and the full {meta['test_examples']}-example test "
        f"set for the final numbers; per-epoch curves on a stratified "
        f"{meta['curve_examples']}-example test subset. ResNet-{spec.layers} (K = {k_max}), "
        f"{args.epochs} epoch(s) per model, {args.seeds} seed(s), batch {BATCH_SIZE}, "
        f"SGD momentum {PAPER_SGD.momentum}, weight decay {PAPER_SGD.weight_decay}, lr "
        + " then ".join(f"{lr:g} for {n} epoch(s)" for lr, n in meta["stages"])
        + " (the paper gives no schedule; with a constant lr these short runs swing by "
        "many points between epochs), no augmentation, no stochastic depth. "
        "Paper: CIFAR-100, ResNet-56, 160 epochs, 3 seeds - only orderings and gaps are "
        "comparable.",
        "",
        "Epoch budget: every Independent model, the FlexTrain model and the Single model "
        f"each get {args.epochs} epoch(s) (passes over the training data); FlexTrain spends "
        "them on one shared model, drawing one depth per mini-batch.",
        "",
        f"Machine: {meta['machine']['cpu_count']} CPU cores, torch "
        f"{meta['machine']['torch']} with {meta['machine']['torch_threads']} threads, no GPU; "
        f"load average at start {meta['machine']['loadavg_1_5_15'][0]:.1f}, at end "
        f"{meta['loadavg_end'][0]:.1f} (another benchmark may share the machine: timings "
        f"are noisy). Wall time of the whole benchmark: {meta['wall_s']:.0f} s.",
        "",
        "## Depths (the paper's pi by parameter share)",
        "",
        markdown_table(
            ["role", "depth k", "params %", "MACs %", "pi"],
            [
                (role, k, pct(arch.parameter_fraction(k)), pct(arch.mac_fraction(k)), pi[k])
                for role, k in zip(["~15 %", "~35 %", "full"], depths, strict=False)
            ],
        ),
        "",
        f"Chosen with `arch.closest_depth_to_parameter_share` ({PAPER_SHARES[0]:.0%} and "
        f"{PAPER_SHARES[1]:.0%}) on ResNet-{spec.layers}, {spec.num_classes} classes, "
        f"{spec.in_channels} channel(s), {spec.image_size}x{spec.image_size} inputs.",
        "",
        "## The two Independent baselines",
        "",
        "Independent (standalone ResNet), the paper's: a separate ResNet with all three "
        "stages and n blocks per stage, n chosen for the parameter count closest to the "
        "prefix's. Independent (prefix alone): the depth-k prefix of this backbone "
        "trained alone (the prefix's own architecture).",
        "",
        markdown_table(
            ["depth k", "prefix params", "standalone model", "standalone params", "ratio"],
            [
                (
                    k,
                    f"{m['prefix_params']:,}",
                    f"ResNet-{m['layers']} (n = {m['n']})",
                    f"{m['params']:,}",
                    f"{m['params'] / m['prefix_params']:.2f}",
                )
                for k, m in sorted(standalone_matches(spec, depths).items(), reverse=True)
            ],
        ),
        "",
        "## Test accuracy (%) on the full test set"
        + (" (mean ± sample std over seeds)" if args.seeds > 1 else ""),
        "",
    ]
    rows = []
    for k in sorted(depths, reverse=True):
        rows.append(
            [f"k={k} ({pct(arch.parameter_fraction(k))} % params)"]
            + [_cell(runs, m, k) for m in args.methods]
        )
    lines += [markdown_table(["depth", *[METHODS[m] for m in args.methods]], rows), ""]

    whole = [m for m in args.methods if m not in ("independent", "standalone")]
    if whole:
        lines += [
            "## Shared models at every depth (%, mean over seeds)",
            "",
            markdown_table(
                ["depth k", "params %", *[METHODS[m] for m in whole]],
                [
                    [k, pct(arch.parameter_fraction(k))]
                    + [pct(mean_std(_accs(runs, m, k))[0]) for m in whole]
                    for k in range(1, k_max + 1)
                ],
            ),
            "",
        ]

    ours = analytic_costs(arch, pi)
    paper_arch = profile("resnet", 56, 100, 3, 32)
    paper = analytic_costs(paper_arch, paper_pi(paper_arch))
    standalone = paper_vs_standalone()
    lines += [
        "## Cost of one FlexTrain run: analytic",
        "",
        "Per training step; 'vs independent' = one FlexTrain model vs training each of the "
        "three independent models for the same number of steps. MACs: training = 3 x forward; "
        "'+distill' adds the teacher's extra block (forward only).",
        "",
        markdown_table(
            [
                "setting",
                "params vs Single",
                "params vs Indep.",
                "MACs vs Single",
                "MACs vs Indep.",
                "MACs+distill vs Single",
                "MACs+distill vs Indep.",
            ],
            [
                [f"paper: ResNet-56/CIFAR-100, pi {paper_pi(paper_arch)}"]
                + [f"{paper[k]:.3f}" for k in paper],
                [f"ours: ResNet-{spec.layers}/{meta['dataset']}, pi {pi}"]
                + [f"{ours[k]:.3f}" for k in ours],
            ],
        ),
        "",
        "The paper's claims (62 % of Single, 41 % of the independent models) are the "
        "parameter ratios with its rounded shares (0.5 + 0.25 x 0.35 + 0.25 x 0.15 = 0.625; "
        "0.625 / 1.5 = 0.417). The 'Indep.' columns above compare with depth-k prefixes "
        "trained alone (Independent (prefix alone)). Against standalone ResNet-20 and "
        "ResNet-8 as the two smaller independent models (the paper's row names), one "
        f"FlexTrain step costs {standalone['params']:.3f} of the three models by parameters "
        f"and {standalone['macs']:.3f} by multiply-adds: the 0.80 / 0.56 MAC reading.",
        "",
        "## Cost of one FlexTrain run: measured wall clock (training only)",
        "",
    ]
    rows = []
    by_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        key = r.method if r.method != "independent" else f"independent-k{r.depths[0]}"
        if not r.diverged:
            by_seed.setdefault(r.seed, {})[key] = r.train_s
    full_ind, full_single, full_ind_nd, full_single_nd = [], [], [], []
    for times in by_seed.values():
        ind = [times.get(f"independent-k{k}") for k in depths]
        if "flextrain" in times and all(v is not None for v in ind):
            full_ind.append(times["flextrain"] / sum(v for v in ind if v is not None))
        if "flextrain" in times and "single" in times:
            full_single.append(times["flextrain"] / times["single"])
        if "flextrain-nodistill" in times and all(v is not None for v in ind):
            full_ind_nd.append(times["flextrain-nodistill"] / sum(v for v in ind if v is not None))
        if "flextrain-nodistill" in times and "single" in times:
            full_single_nd.append(times["flextrain-nodistill"] / times["single"])
    rows.append(
        [
            "full runs (sequential, per seed)",
            _med(full_ind),
            _med(full_single),
            _med(full_ind_nd),
            _med(full_single_nd),
        ]
    )
    if timing is not None:
        rows.append(
            [
                f"interleaved blocks ({timing['repeats']} x {timing['steps_per_block']} steps)",
                _med(timing["ratio_vs_independent"]),
                _med(timing["ratio_vs_single"]),
                _med(timing["nodistill_ratio_vs_independent"]),
                _med(timing["nodistill_ratio_vs_single"]),
            ]
        )
    lines += [
        markdown_table(
            [
                "measurement",
                "FlexTrain / Indep.",
                "FlexTrain / Single",
                "FlexTrain β=0 / Indep.",
                "FlexTrain β=0 / Single",
            ],
            rows,
        ),
        "",
        "Median (range) of the per-seed or per-repeat ratios. Full runs: training seconds "
        "(evaluation subtracted) of whole runs done one after another. Interleaved blocks: "
        "equal step counts per method, order rotated per repeat, ratio taken within a repeat.",
    ]
    if timing is not None:
        lines += [
            "",
            "Seconds per step in the interleaved blocks (median): "
            + ", ".join(
                f"{k} {1000 * statistics.median(v):.0f} ms"
                for k, v in timing["seconds_per_step"].items()
            )
            + f"; FlexTrain's realised depth mix {timing['flextrain_depth_mix']}.",
        ]
    lines += ["", "## Wall time per run", ""]
    rows = []
    for method, run_depths in sorted({(r.method, tuple(r.depths)) for r in runs}):
        mine = [r for r in runs if (r.method, tuple(r.depths)) == (method, run_depths)]
        done = [r for r in mine if not r.diverged]
        label = METHODS[method] + (f" k={run_depths[0]}" if method == "independent" else "")
        if method == "standalone" and mine[0].standalone is not None:
            label += f" ResNet-{mine[0].standalone['layers']} (rows k={list(run_depths)})"
        if not done:
            rows.append([label, "diverged", "-"])
            continue
        rows.append(
            [
                label,
                " / ".join(f"{r.train_s:.0f}" for r in done),
                " / ".join(f"{r.eval_s:.0f}" for r in done),
            ]
        )
    lines += [
        markdown_table(["run", "training s (per seed)", "per-epoch evaluation s"], rows),
        "",
        "Independent at full depth and Single do identical work; the difference between "
        "their times shows how noisy sequential timings on this machine are.",
        "",
    ]
    return "\n".join(lines)


def plot(
    path: Any, runs: list[Run], depths: list[int], methods: Sequence[str], lr_drop: int | None
) -> None:
    """Accuracy on the curve subset vs epoch: one panel per depth, one line per method.

    ``lr_drop``: the last epoch before the lower lr (a dotted line), None without one.
    """
    fig, axes = plt.subplots(1, len(depths), figsize=(5 * len(depths), 4), squeeze=False)
    for ax, k in zip(axes[0], sorted(depths, reverse=True), strict=True):
        for method in methods:
            curves = [
                [e["accuracy"][k] for e in r.epochs if k in e.get("accuracy", {})]
                for r in runs
                if r.method == method and k in r.depths
            ]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = [100 * statistics.fmean(c[i] for c in curves) for i in range(n)]
            ax.plot(range(1, n + 1), mean, marker="o", label=METHODS[method])
        if lr_drop is not None:
            ax.axvline(lr_drop + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"depth k={k}")
        ax.set_xlabel("epoch (dotted: lr drop)" if lr_drop is not None else "epoch")
        ax.set_ylabel("test accuracy % (curve subset)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.reproduce_centralised",
        description="Paper Table 1 (centralised FlexTrain) at reduced scale.",
    )
    add_scale_arguments(p, NAME, limit=12000, curve_limit=2000, curve_unit="epoch")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 4)")
    p.add_argument(
        "--seeds",
        default=None,
        help="a count (3 = seeds 0,1,2) or a comma-separated list (0,1,2; one seed: 4,); "
        "default 3 (--quick: 1)",
    )
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip a seed whose JSON file exists (resume an interrupted run)",
    )
    p.add_argument(
        "--pool-at-prefix",
        action="store_true",
        help="model option of the shared and prefix-alone models: a shallow prefix is "
        "pooled at its own resolution (use another --out than the paper model's)",
    )
    p.add_argument(
        "--stage-adapters",
        nargs="?",
        const="linear",
        default=None,
        choices=("linear", "affine"),
        help="model option: per-stage adapters in the shared head, linear (the bare "
        "flag) or affine (use another --out than the paper model's)",
    )
    p.add_argument(
        "--decay-epochs",
        type=int,
        default=1,
        help="last epochs at a lower lr (default 1; at most epochs - 1; 0: constant lr)",
    )
    p.add_argument(
        "--decay-factor", type=float, default=0.1, help="lr factor of those epochs (default 0.1)"
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    p.add_argument("--timing-steps", type=int, default=None, help="steps per timing block")
    p.add_argument("--timing-repeats", type=int, default=None, help="timing repeats (0: skip)")
    args = p.parse_args(argv)
    defaults = {
        "epochs": (1, 4),
        "limit": (1000, 12000),
        "curve_limit": (500, 2000),
        "timing_steps": (4, 40),
        "timing_repeats": (1, 5),
    }
    fill_defaults(args, defaults)
    args.methods = csv_list(args.methods)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    try:
        args.seeds = parse_seeds(args.seeds or ("1" if args.quick else "3"))
    except ValueError as exc:
        p.error(str(exc))
    if args.epochs < 1 or args.limit < 1 or args.curve_limit < 1:
        p.error("epochs, limit and curve-limit must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # Imported here: the report module imports this one.
    from benchmarks.reproduce_report import centralised_report

    args = parse_args(argv)
    origin = provenance(argv, "benchmarks.reproduce_centralised")
    setup = begin(args, NAME)
    start, info, out, splits, base = setup.start, setup.machine, setup.out, setup.splits, setup.spec
    options = {
        "pool_at_prefix": int(args.pool_at_prefix),
        "stage_adapters": {None: 0, "linear": 1, "affine": 2}[args.stage_adapters],
    }
    spec = ModelSpec(
        base.family, base.layers, base.num_classes, base.in_channels, base.image_size, options
    )
    # Depths and pi by the paper model's parameter shares (adapters would shift them).
    arch = base.profile()
    pi = paper_pi(arch)
    depths = sorted(pi)
    for share in PAPER_SHARES:
        assert closest_depth_to_parameter_share(arch, share) in depths
    n_curve = min(args.curve_limit, len(splits.test_labels))
    curve = TimedLoader(
        make_loader(
            splits.test,
            stratified_subset(splits.test_labels, n_curve, 0),
            batch_size=EVAL_BATCH_SIZE,
        )
    )
    final_loader = make_loader(splits.test, batch_size=EVAL_BATCH_SIZE)
    log(
        f"centralised reproduction: {args.dataset}, {len(splits.train_labels)} train / "
        f"{len(splits.test_labels)} test examples, ResNet-{args.layers} (K={spec.num_blocks}), "
        f"depths {depths}, pi {pi}, {args.epochs} epoch(s), seeds {args.seeds}, "
        f"torch threads {torch.get_num_threads()}"
    )
    for k, m in sorted(standalone_matches(spec, depths).items()):
        log(
            f"  depth {k}: prefix {m['prefix_params']:,} parameters; standalone "
            f"ResNet-{m['layers']} (n = {m['n']}) {m['params']:,}"
        )
    stages = schedule(args.epochs, args.decay_epochs, args.decay_factor)
    context = {
        "kind": NAME,
        "provenance": origin,
        "args": {k: v for k, v in vars(args).items()},
        "stages": [(c.lr, n) for c, n in stages],
        "dataset": args.dataset,
        "train_examples": len(splits.train_labels),
        "test_examples": len(splits.test_labels),
        "curve_examples": n_curve,
        "machine": info,
        "model": {"family": spec.family, "layers": spec.layers, "num_blocks": spec.num_blocks},
        "spec": spec.to_dict(),
        "model_options": options,
        "depths": depths,
        "pi": {str(k): v for k, v in pi.items()},
        "standalone_matches": {str(k): v for k, v in standalone_matches(spec, depths).items()},
        "shares": {
            str(k): {"params": arch.parameter_fraction(k), "macs": arch.mac_fraction(k)}
            for k in range(1, spec.num_blocks + 1)
        },
        "analytic_costs": analytic_costs(arch, pi),
    }
    written = []
    runs: list[Run] = []
    for seed in args.seeds:
        path = out / "runs" / f"seed{seed}.json"
        if args.skip_existing and path.exists():
            log(f"[seed {seed}] {path} exists: skipped")
            written.append(path)
            continue
        t0 = time.perf_counter()
        mine = run_seed(
            seed, spec, splits.train, curve, final_loader, pi, depths, stages, args.methods
        )
        runs += mine
        record = {
            **context,
            "seed": seed,
            "wall_s": time.perf_counter() - t0,
            "loadavg_end": list(os.getloadavg()),
            "runs": [r.to_dict() for r in mine],
        }
        written.append(write_json(path, record))
        log(f"[seed {seed}] wrote {path} ({record['wall_s']:.0f} s)")
    if args.timing_repeats > 0:
        log(
            f"interleaved timing: {args.timing_repeats} repeat(s) x {args.timing_steps} steps "
            "per method"
        )
        timing = timing_blocks(
            spec, splits.train, pi, depths, args.timing_steps, args.timing_repeats
        )
        written.append(
            write_json(out / "runs" / "timing.json", {**context, "kind": "timing", **timing})
        )
    markdown = centralised_report(written)
    plot_path = out / f"{NAME}.png"
    plot(plot_path, runs, depths, args.methods, stages[0][1] if len(stages) > 1 else None)
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
        f"python -m benchmarks.reproduce_report --centralised {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
