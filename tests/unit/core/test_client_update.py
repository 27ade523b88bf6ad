"""One device's round: trains only its prefix, uploads only its prefix, mutates nothing."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from flextrain.core.federated import client_update
from flextrain.core.losses import TrainingDiverged
from flextrain.core.models import ModelSpec
from flextrain.core.optim import OptimizerConfig
from flextrain.core.partition import PrefixMismatch, extract_prefix, prefix_keys


def _global(spec: ModelSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in spec.build().state_dict().items()}


@pytest.mark.parametrize(("depth", "distill"), [(1, False), (2, True), (3, True)])
def test_client_uploads_exactly_its_prefix_and_leaves_the_input_alone(
    spec: ModelSpec, blobs: Any, depth: int, distill: bool
) -> None:
    train, _ = blobs(n_train=40)
    state = _global(spec)
    sent = extract_prefix(state, None, depth)
    before = {k: v.clone() for k, v in sent.items()}
    result = client_update(
        sent, spec, depth, DataLoader(train, batch_size=16), 1, beta=0.2, distill=distill
    )
    assert list(result.tensors) == prefix_keys(list(state), depth)
    assert result.num_examples == 40
    assert result.train_loss > 0
    for key, value in sent.items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(result.tensors["stem.conv.weight"], sent["stem.conv.weight"])
    assert result.tensors["stem.bn.num_batches_tracked"].item() == 3  # 40 / 16 -> 3 steps
    assert all(t.device.type == "cpu" for t in result.tensors.values())


def test_client_refuses_tensors_beyond_its_depth(spec: ModelSpec, blobs: Any) -> None:
    train, _ = blobs(n_train=16)
    state = _global(spec)
    with pytest.raises(PrefixMismatch, match="outside the depth-1 prefix"):
        client_update(state, spec, 1, DataLoader(train, batch_size=16), 1)


def test_client_counts_examples_of_one_local_epoch(spec: ModelSpec, blobs: Any) -> None:
    train, _ = blobs(n_train=30)
    sent = extract_prefix(_global(spec), None, 2)
    result = client_update(sent, spec, 2, DataLoader(train, batch_size=8), 3, max_steps_per_epoch=2)
    assert result.num_examples == 16
    assert result.tensors["stem.bn.num_batches_tracked"].item() == 6


@pytest.mark.parametrize("depth", [0, 4])
def test_client_depth_must_be_a_tier_depth(spec: ModelSpec, blobs: Any, depth: int) -> None:
    train, _ = blobs(n_train=8)
    with pytest.raises(ValueError, match="depth"):
        client_update({}, spec, depth, DataLoader(train, batch_size=8), 1)


def test_client_reports_divergence_instead_of_uploading_nan(spec: ModelSpec, blobs: Any) -> None:
    train, _ = blobs(n_train=32)
    sent = extract_prefix(_global(spec), None, 3)
    with pytest.raises(TrainingDiverged):
        client_update(sent, spec, 3, DataLoader(train, batch_size=8), 2, OptimizerConfig(lr=1e12))
