"""Algorithm 1: depth draws follow pi, only the active prefix moves, prefixes learn."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from flextrain.core import arch
from flextrain.core.centralised import (
    DepthSampler,
    evaluate,
    train_fixed_depth,
    train_flextrain,
    train_independent,
    train_single,
)
from flextrain.core.losses import TrainingDiverged, centralised_loss
from flextrain.core.models import FlexResNet, ModelSpec, build_model
from flextrain.core.optim import OptimizerConfig, make_optimizer


def test_depth_draws_match_pi() -> None:
    pi = {1: 0.25, 2: 0.25, 3: 0.5}
    sampler = DepthSampler(pi, seed=123)
    n = 20_000
    counts = Counter(sampler.sample() for _ in range(n))
    chi2 = sum((counts[d] - n * p) ** 2 / (n * p) for d, p in pi.items())
    assert set(counts) == set(pi)
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001


def test_depth_draws_are_reproducible_from_the_seed() -> None:
    a = DepthSampler({2: 1.0, 5: 3.0}, seed=7)
    b = DepthSampler({2: 1.0, 5: 3.0}, seed=7)
    assert [a.sample() for _ in range(50)] == [b.sample() for _ in range(50)]
    assert a.probs == (0.25, 0.75)


@pytest.mark.parametrize("pi", [{}, {0: 1.0}, {2: -1.0}, {2: 0.0}])
def test_invalid_pi_is_rejected(pi: dict[int, float]) -> None:
    with pytest.raises(ValueError):
        DepthSampler(pi)


def test_paper_pi_for_resnet56() -> None:
    sampler = DepthSampler.paper_default(arch.profile("resnet", 56, 100, 3, 32))
    assert dict(zip(sampler.depths, sampler.probs, strict=True)) == {14: 0.25, 19: 0.25, 27: 0.5}


def _snapshot(model: FlexResNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _step(model: FlexResNet, opt: torch.optim.Optimizer, depth: int, beta: float) -> None:
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    opt.zero_grad(set_to_none=True)
    torch.autograd.backward(centralised_loss(model, x, y, depth, beta).total)
    opt.step()


@pytest.mark.parametrize("beta", [0.0, 0.2])
def test_sgd_with_momentum_and_weight_decay_leaves_inactive_blocks_bitwise_unchanged(
    beta: float,
) -> None:
    torch.manual_seed(0)
    model = build_model("resnet", 20, 4, 1)
    opt = make_optimizer(model.parameters(), OptimizerConfig(weight_decay=0.1, momentum=0.9))
    for _ in range(2):  # momentum buffers now exist for every block
        _step(model, opt, model.num_blocks, beta)
    before = _snapshot(model)
    k = 3
    for _ in range(3):
        _step(model, opt, k, beta)
    after = model.state_dict()
    params = dict(model.named_parameters())
    for key, value in after.items():
        block = int(key.split(".")[1]) if key.startswith("blocks.") else -1
        if block < k:
            continue  # stem, head and active blocks
        if block == k and beta > 0 and key not in params:
            continue  # the teacher's block runs forward: its BN statistics see the batch
        assert torch.equal(value, before[key]), key
    for key in ("stem.conv.weight", "blocks.0.conv1.weight", f"blocks.{k - 1}.bn2.weight"):
        assert not torch.equal(after[key], before[key]), key


def _loader(ds: Any, batch: int = 32, seed: int = 0) -> DataLoader[Any]:
    return DataLoader(
        ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def test_flextrain_prefixes_all_learn_a_learnable_task(blobs: Any) -> None:
    train, test = blobs(n_train=320, classes=4)
    torch.manual_seed(0)
    model = build_model("resnet", 8, 4, 1)
    records: list[dict[str, Any]] = []
    history = train_flextrain(
        model,
        _loader(train),
        {1: 0.25, 2: 0.25, 3: 0.5},
        OptimizerConfig(lr=0.05),
        epochs=8,
        beta=0.2,
        eval_loader=DataLoader(test, batch_size=100),
        progress=lambda _epoch, record: records.append(record),
    )
    assert len(history["epochs"]) == len(records) == 8
    assert history["steps"] == 8 * 10
    assert sum(history["epochs"][0]["depth_counts"].values()) == 10
    final = history["epochs"][-1]["accuracy"]
    assert set(final) == {1, 2, 3}
    assert min(final.values()) > 0.6  # chance is 0.25
    assert history["epochs"][-1]["loss"] < history["epochs"][0]["loss"]


def test_truncated_single_model_collapses_where_flextrain_prefixes_work(blobs: Any) -> None:
    """Table 1's shape: Single is fine at full depth and poor truncated; FlexTrain is fine."""
    train, test = blobs(n_train=320, classes=4)
    torch.manual_seed(0)
    single = build_model("resnet", 20, 4, 1)
    train_single(single, _loader(train), epochs=4)
    torch.manual_seed(0)
    flex = build_model("resnet", 20, 4, 1)
    train_flextrain(flex, _loader(train), {1: 0.25, 3: 0.25, 9: 0.5}, epochs=4)
    eval_loader = DataLoader(test, batch_size=100)
    single_acc = evaluate(single, eval_loader, [1, 9])
    flex_acc = evaluate(flex, eval_loader, [1, 9])
    assert single_acc[9] > 0.9 and flex_acc[9] > 0.9
    assert flex_acc[1] > 0.9
    assert single_acc[1] < flex_acc[1] - 0.3


def test_divergence_is_reported_not_carried_on(blobs: Any) -> None:
    train, _ = blobs(n_train=64)
    model = build_model("resnet", 8, 4, 1)
    with pytest.raises(TrainingDiverged):
        train_flextrain(model, _loader(train), {1: 1.0}, OptimizerConfig(lr=1e12), epochs=2)


def test_truncated_single_model_trains_only_full_depth_and_independent_trains_each(
    blobs: Any,
) -> None:
    train, _ = blobs(n_train=64)
    spec = ModelSpec("resnet", 8, 4, 1, 8)
    torch.manual_seed(0)
    single = spec.build()
    hist = train_single(single, _loader(train), epochs=1, max_steps_per_epoch=1)
    assert hist["epochs"][0]["depth_counts"] == {3: 1}
    runs = train_independent(spec, _loader(train), [1, 3], epochs=1, seed=5, max_steps_per_epoch=1)
    assert sorted(runs) == [1, 3]
    torch.manual_seed(5)
    untouched = spec.build().state_dict()
    for key, value in runs[1].model.state_dict().items():
        if key.startswith(("blocks.1.", "blocks.2.")):
            assert torch.equal(value, untouched[key]), key


def test_fixed_depth_training_rejects_a_depth_the_model_lacks(blobs: Any) -> None:
    train, _ = blobs(n_train=32)
    with pytest.raises(ValueError, match="depth"):
        train_fixed_depth(build_model("resnet", 8, 4, 1), _loader(train), 4)


def test_evaluate_reports_every_depth_and_restores_training_mode(blobs: Any) -> None:
    _, test = blobs(n_test=50)
    model = build_model("resnet", 8, 4, 1).train()
    acc = evaluate(model, DataLoader(test, batch_size=16), [3, 1, 1])
    assert sorted(acc) == [1, 3]
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert model.training
