"""One sub-model per tier from a checkpoint (flextrain.core.export): what `flextrain run`
writes into runs/<job>/models and the aggregator into <checkpoint dir>/models when
training completes (FLEXTRAIN_CHECKPOINT_DIR/EXPORTS_DIR, reported in a job's
status.model.exports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flextrain.aggregator.store import Checkpoint
from flextrain.core.export import export_submodel
from flextrain.core.models import ModelSpec
from flextrain.data.datasets import NORMALISATION
from flextrain.jobplan import JobPlan


def export_models(plan: JobPlan, checkpoint: Checkpoint, spec: ModelSpec, directory: Path) -> list[dict[str, Any]]:
    """One sub-model per tier, with its latest accuracy in the metadata."""
    latest = {d: a for d, a in ((int(h["depth"]), float(h["accuracy"])) for h in checkpoint.accuracy_history)}
    norm = NORMALISATION[plan.job.spec.dataset.name]
    rows = []
    for tier in plan.tiers:
        path, meta_path = export_submodel(
            checkpoint.global_state,
            spec,
            tier.depth,
            directory / tier.name,
            {
                "job": plan.name,
                "tier": tier.name,
                "dataset": plan.job.spec.dataset.name,
                "normalisation": {"mean": list(norm.mean), "std": list(norm.std)},
                "accuracy": latest.get(tier.depth),
                "round": checkpoint.completed_rounds,
            },
        )
        rows.append({"tier": tier.name, "depth": tier.depth, "path": path, "meta": meta_path, "accuracy": latest.get(tier.depth)})
    return rows
