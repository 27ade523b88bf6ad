"""How many examples each trainer can have: the size of every data shard, computed as
the trainers compute their own shard (flextrain.trainer.loop: the same dataset, seed,
limit and partition). An update's example count weighs it in the merge, so the
aggregator accepts no count above the sender's shard size (see state.Aggregation)."""

from __future__ import annotations

import logging
from pathlib import Path

from flextrain.jobplan import JobPlan

log = logging.getLogger("flextrain.aggregator")


def shard_sizes(plan: JobPlan, data_dir: Path | None) -> list[int] | None:
    """Examples in shard 0, 1, ... of the job, or None when the training data cannot
    be read here (then the configured maximum bounds the counts; logged)."""
    from flextrain.data import DatasetFormatError, DatasetNotFound, load_dataset, partition

    ds = plan.job.spec.dataset
    try:
        splits = load_dataset(ds.name, data_dir, seed=ds.seed, limit=ds.limit or None)
        shards = partition(
            splits.train_labels,
            plan.num_shards,
            ds.partition.scheme,
            ds.partition.alpha or None,
            ds.seed,
        )
    except (DatasetNotFound, DatasetFormatError, OSError, ValueError) as exc:
        log.warning(
            "cannot read the training data to bound example counts by shard size (%s); "
            "counts are bounded by the configured maximum instead",
            str(exc)[:300],
        )
        return None
    return [len(shard) for shard in shards]
