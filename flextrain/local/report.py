"""What a finished local run leaves behind: report.md, an accuracy plot, and one
exported sub-model per tier (only that tier's prefix) with its metadata."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from flextrain.aggregator.store import Checkpoint
from flextrain.core.models import ModelSpec
from flextrain.jobplan import JobPlan


def accuracy_table(history: list[dict[str, Any]]) -> dict[int, dict[int, float]]:
    """round -> depth -> accuracy."""
    table: dict[int, dict[int, float]] = {}
    for entry in history:
        table.setdefault(int(entry["round"]), {})[int(entry["depth"])] = float(entry["accuracy"])
    return table


def plot_accuracy(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = accuracy_table(history)
    depths = sorted({d for row in table.values() for d in row})
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for depth in depths:
        rounds = [r for r in sorted(table) if depth in table[r]]
        ax.plot(rounds, [table[r][depth] for r in rounds], marker="o", label=f"depth {depth}")
    ax.set_xlabel("round")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def write_report(
    plan: JobPlan,
    checkpoint: Checkpoint,
    spec: ModelSpec,
    out: Path,
    *,
    wall_seconds: float,
    command: list[str],
    exports: list[dict[str, Any]],
    plot: Path,
    restarts: dict[str, int],
) -> Path:
    job = plan.job.spec
    arch = spec.profile()
    table = accuracy_table(checkpoint.accuracy_history)
    depths = sorted({t.depth for t in plan.tiers})
    final = table.get(max(table), {}) if table else {}
    lines = [
        f"# FlexTrain run: {plan.name}",
        "",
        "## Job",
        "",
        f"- model: {spec.label} ({spec.num_blocks} blocks, {arch.parameters(arch.num_blocks):,} parameters), "
        f"{spec.num_classes} classes, input {spec.in_channels}x{spec.image_size}x{spec.image_size}",
        f"- dataset: {job.dataset.name}, partition {job.dataset.partition.scheme}"
        + (f" (alpha {job.dataset.partition.alpha})" if job.dataset.partition.alpha else "")
        + f", seed {job.dataset.seed}" + (f", limit {job.dataset.limit}" if job.dataset.limit else ""),
        f"- training: {checkpoint.completed_rounds}/{job.training.rounds} rounds, {job.training.local_epochs} local epochs, "
        f"batch {job.training.batch_size}, {job.training.optimizer.name} lr {job.training.optimizer.learning_rate}, "
        f"distillation beta {job.training.distillation.beta} ({job.training.distillation.target})"
        + (
            f", anchor {job.training.distillation.anchor.loss} (tiers: {job.training.distillation.anchor.tiers})"
            if job.training.distillation.anchor.loss != "none"
            else ""
        ),
        f"- aggregation: {job.aggregation.strategy}, quorum {job.aggregation.quorum}, compression {job.aggregation.compression}",
        f"- wall time: {wall_seconds:.1f} s",
        "",
        "## Tiers",
        "",
        "| tier | depth | replicas | parameters (share) | final accuracy | bytes sent to tier | bytes received from tier | trainer restarts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tier in plan.tiers:
        counters = checkpoint.tier_counters.get(tier.name, {})
        acc = final.get(tier.depth)
        lines.append(
            f"| {tier.name} | {tier.depth} ({tier.depth_source}) | {tier.replicas} | "
            f"{arch.parameters(tier.depth):,} ({100 * arch.parameter_fraction(tier.depth):.1f} %) | "
            f"{'-' if acc is None else f'{acc:.4f}'} | {_bytes(counters.get('bytes_sent', 0))} | "
            f"{_bytes(counters.get('bytes_received', 0))} | {sum(v for k, v in restarts.items() if k.startswith(f'trainer-{tier.name}-'))} |"
        )
    lines += [
        "",
        "## Held-out accuracy per depth and round",
        "",
        "| round | " + " | ".join(f"depth {d}" for d in depths) + " |",
        "|---|" + "---|" * len(depths),
    ]
    for r in sorted(table):
        lines.append(f"| {r} | " + " | ".join(f"{table[r][d]:.4f}" if d in table[r] else "-" for d in depths) + " |")
    lines += [
        "",
        f"![accuracy per depth]({plot.name})",
        "",
        "## Exported sub-models",
        "",
        "Each holds only its tier's prefix (stem, its blocks, the shared head):",
        "",
    ]
    for row in exports:
        lines.append(f"- `{row['path'].relative_to(out)}` (depth {row['depth']}), metadata `{row['meta'].relative_to(out)}`")
    first = exports[0]["path"].relative_to(out) if exports else "models/TIER.safetensors"
    lines += [
        "",
        "Load one for inference:",
        "",
        "```python",
        "from flextrain.core.export import load_submodel",
        f'model, meta = load_submodel("{out / str(first)}")',
        "logits = model(images)  # images: (B, C, H, W), normalised with meta['normalisation']",
        "```",
        "",
        "## Reproduce",
        "",
        "```bash",
        shlex.join(command),
        "```",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
