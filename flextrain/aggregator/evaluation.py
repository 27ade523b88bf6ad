"""Held-out evaluation of the global model after a round: the accuracy of the prefix
of every tier's depth, kept as a history (checkpointed with the model)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flextrain.aggregator.metrics import AggregatorMetrics
from flextrain.core.centralised import evaluate
from flextrain.core.models import ModelSpec
from flextrain.jobplan import JobPlan


class Evaluator:
    """Evaluates one job's global model; runs on the aggregator's worker thread."""

    def __init__(
        self,
        plan: JobPlan,
        model_spec: ModelSpec,
        metrics: AggregatorMetrics,
        *,
        data_dir: Path | None,
        batch_size: int,
        device: str,
        threads: int | None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self._plan = plan
        self._model_spec = model_spec
        self._metrics = metrics
        self._data_dir = data_dir
        self._batch_size = batch_size
        self._device = device
        self._threads = threads
        self._loader: Any = None
        #: Every evaluation: {"round", "depth", "accuracy"} in the order they ran.
        self.history: list[dict[str, Any]] = list(history or [])

    def evaluate(self, global_state: Mapping[str, Tensor], closed: int) -> None:
        """Evaluate the model after round `closed` with the evaluation's torch threads
        (the merge runs with the process's), and record it."""
        threads = self._threads
        merging = torch.get_num_threads()
        if threads and threads != merging:
            torch.set_num_threads(threads)
        try:
            self._evaluate_depths(global_state, closed)
        finally:
            if threads and threads != merging:
                torch.set_num_threads(merging)

    def latest(self) -> dict[int, tuple[float, int]]:
        """depth -> (accuracy, round) of the latest evaluation of each depth."""
        out: dict[int, tuple[float, int]] = {}
        for entry in self.history:
            out[int(entry["depth"])] = (float(entry["accuracy"]), int(entry["round"]))
        return out

    def of_round(self, number: int) -> dict[int, float]:
        """depth -> accuracy of the evaluation after round `number` (empty: none ran)."""
        return {a["depth"]: a["accuracy"] for a in self.history if a["round"] == number}

    def _batches(self) -> Any:
        if self._loader is None:
            from flextrain.data import load_dataset, make_loader

            ds = self._plan.job.spec.dataset
            splits = load_dataset(ds.name, self._data_dir, seed=ds.seed, limit=ds.limit)
            self._loader = make_loader(splits.test, batch_size=self._batch_size)
        return self._loader

    def _evaluate_depths(self, global_state: Mapping[str, Tensor], closed: int) -> None:
        model = self._model_spec.build()
        model.load_state_dict(global_state)
        model.to(self._device)
        depths = sorted({t.depth for t in self._plan.tiers})
        accuracy = evaluate(model, self._batches(), depths, self._device)
        for depth, acc in accuracy.items():
            self.history.append({"round": closed, "depth": depth, "accuracy": acc})
            self._metrics.set_accuracy(depth, acc)
