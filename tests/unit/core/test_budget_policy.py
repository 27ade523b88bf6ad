"""A device's tier is the deepest prefix that fits its budget; the policy needs no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flextrain.core import arch
from flextrain.core.policy import BudgetTooSmall, deepest_depth_for_budget, training_memory

MODEL = ("resnet", 56, 100, 3, 32)
PROFILE = arch.profile(*MODEL)


@pytest.mark.parametrize("depth", [1, 8, 18, 19, 26, 27])
def test_parameter_budget_picks_the_deepest_fitting_prefix(depth: int) -> None:
    exact = PROFILE.parameters(depth)
    assert deepest_depth_for_budget(*MODEL, max_parameters=exact) == depth
    if depth > 1:
        assert deepest_depth_for_budget(*MODEL, max_parameters=exact - 1) == depth - 1


def test_paper_tier_shares_map_back_to_the_paper_depths() -> None:
    total = PROFILE.parameters()
    for share, depth in [(0.052, 8), (0.117, 12), (0.203, 16), (0.483, 21), (0.827, 25)]:
        budget = round(share * total) + 1000
        assert deepest_depth_for_budget(*MODEL, max_parameters=budget) == depth


@pytest.mark.parametrize("depth", [1, 5, 20, 27])
def test_memory_budget_picks_the_deepest_fitting_prefix(depth: int) -> None:
    need = training_memory(PROFILE, depth, batch_size=32).total
    assert deepest_depth_for_budget(*MODEL, memory_bytes=need, batch_size=32) == depth
    if depth > 1:
        assert deepest_depth_for_budget(*MODEL, memory_bytes=need - 1, batch_size=32) == depth - 1


def test_both_budgets_must_fit() -> None:
    by_params = deepest_depth_for_budget(*MODEL, max_parameters=PROFILE.parameters(20))
    by_memory = deepest_depth_for_budget(*MODEL, memory_bytes=training_memory(PROFILE, 10).total)
    both = deepest_depth_for_budget(
        *MODEL,
        max_parameters=PROFILE.parameters(20),
        memory_bytes=training_memory(PROFILE, 10).total,
    )
    assert (by_params, by_memory, both) == (20, 10, 10)


def test_no_budget_means_the_full_model() -> None:
    assert deepest_depth_for_budget(*MODEL) == 27


def test_budget_below_depth_one_raises_budget_too_small() -> None:
    with pytest.raises(BudgetTooSmall, match="depth 1"):
        deepest_depth_for_budget(*MODEL, max_parameters=PROFILE.parameters(1) - 1)
    with pytest.raises(BudgetTooSmall):
        deepest_depth_for_budget(*MODEL, memory_bytes=1024)
    assert issubclass(BudgetTooSmall, ValueError)


def test_memory_estimate_is_weights_grads_momentum_and_batch_activations() -> None:
    est = training_memory(PROFILE, 12, batch_size=64, bytes_per_value=4)
    params = PROFILE.parameters(12)
    assert est.gradients == est.optimizer == 4 * params
    assert est.weights == PROFILE.state_bytes(12)
    assert est.activations == 64 * 4 * PROFILE.activations(12)
    assert est.total == est.weights + est.gradients + est.optimizer + est.activations
    doubled = training_memory(PROFILE, 12, batch_size=128)
    assert doubled.activations == 2 * est.activations


def test_smaller_batches_allow_deeper_tiers() -> None:
    budget = training_memory(PROFILE, 15, batch_size=64).total
    assert deepest_depth_for_budget(*MODEL, memory_bytes=budget, batch_size=64) == 15
    assert deepest_depth_for_budget(*MODEL, memory_bytes=budget, batch_size=8) > 15


def test_policy_and_arch_import_without_torch() -> None:
    code = (
        "import sys; import flextrain.core.policy, flextrain.core.arch; "
        "import flextrain.core; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
