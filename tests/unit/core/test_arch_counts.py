"""Analytic prefix costs (arch.py) agree with the torch model and with the paper's tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flextrain.api.catalog import RESNET_LAYERS
from flextrain.core import arch
from flextrain.core.models import build_model
from flextrain.core.partition import extract_prefix, prefix_keys, tensor_bytes


def _depths(k: int) -> list[int]:
    return sorted({0, 1, k // 3, k // 3 + 1, k // 2, 2 * k // 3 + 1, k})


@pytest.mark.parametrize("layers", RESNET_LAYERS)
def test_analytic_parameter_counts_equal_the_torch_model(layers: int) -> None:
    model = build_model("resnet", layers, 100, 3)
    profile = arch.profile("resnet", layers, 100, 3, 32)
    params = dict(model.named_parameters())
    assert profile.parameters() == sum(p.numel() for p in params.values())
    for depth in _depths(model.num_blocks):
        keys = set(prefix_keys(model, depth))
        torch_count = sum(p.numel() for name, p in params.items() if name in keys)
        assert profile.parameters(depth) == torch_count, depth


@pytest.mark.parametrize(("layers", "classes", "channels"), [(8, 10, 1), (20, 100, 3), (56, 10, 3)])
def test_analytic_state_bytes_equal_the_prefix_state_dict(
    layers: int, classes: int, channels: int
) -> None:
    model = build_model("resnet", layers, classes, channels)
    profile = arch.profile("resnet", layers, classes, channels, 8)
    for depth in _depths(model.num_blocks):
        prefix = extract_prefix(model.state_dict(), model, depth)
        assert profile.state_bytes(depth) == tensor_bytes(prefix), depth


def _measured_macs(model: nn.Module, x: Tensor, depth: int) -> int:
    total = 0

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += module.weight.numel() * out.shape[2] * out.shape[3]
        elif isinstance(module, nn.Linear):
            total += module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model(x, depth)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_analytic_macs_equal_conv_and_linear_work_of_the_torch_model(
    channels: int, size: int
) -> None:
    model = build_model("resnet", 20, 10, channels)
    profile = arch.profile("resnet", 20, 10, channels, size)
    x = torch.randn(1, channels, size, size)
    for depth in range(model.num_blocks + 1):
        assert profile.macs(depth) == _measured_macs(model, x, depth), depth


def _saved_values(model: nn.Module, batch: int, depth: int, channels: int, size: int) -> int:
    seen: dict[tuple[int, tuple[int, ...]], int] = {}
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t: Tensor) -> Tensor:
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), tuple(t.shape))] = t.numel()
        return t

    x = torch.randn(batch, channels, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x, depth), y)
    return sum(seen.values())


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 32)])
def test_activation_estimate_matches_what_autograd_saves(channels: int, size: int) -> None:
    model = build_model("resnet", 20, 10, channels)
    profile = arch.profile("resnet", 20, 10, channels, size)
    for depth in (0, 1, 3, 9):
        # The difference between two batch sizes removes weights and per-channel stats.
        per_example = (
            _saved_values(model, 4, depth, channels, size)
            - _saved_values(model, 2, depth, channels, size)
        ) / 2
        assert per_example == pytest.approx(profile.activations(depth), rel=0.01)


def test_resnet56_for_100_classes_has_858868_parameters() -> None:
    assert arch.profile("resnet", 56, 100, 3, 32).parameters() == 858_868


TABLE3 = {8: 5.2, 12: 11.7, 16: 20.3, 18: 24.6, 21: 48.3, 23: 65.5, 25: 82.7, 27: 100.0}


@pytest.mark.parametrize(("depth", "percent"), TABLE3.items())
def test_resnet56_prefix_shares_match_the_papers_table3(depth: int, percent: float) -> None:
    fractions = arch.parameter_fractions("resnet", 56, 100, 3)
    assert 100 * fractions[depth] == pytest.approx(percent, abs=0.1)


@pytest.mark.parametrize(("depth", "percent"), [(8, 30.4), (16, 59.6), (21, 77.4)])
def test_resnet56_mac_shares_match_the_method_doc(depth: int, percent: float) -> None:
    fractions = arch.mac_fractions("resnet", 56, 100, 3, 32)
    assert 100 * fractions[depth] == pytest.approx(percent, abs=0.1)


RESNET20 = {
    1: (4.2, 12.7),
    3: (7.6, 36.0),
    6: (26.1, 68.0),
    7: (46.3, 76.7),
    8: (73.2, 88.4),
    9: (100.0, 100.0),
}


@pytest.mark.parametrize(("depth", "shares"), RESNET20.items())
def test_resnet20_param_and_mac_shares_match_the_method_doc(
    depth: int, shares: tuple[float, float]
) -> None:
    profile = arch.profile("resnet", 20, 100, 3, 32)
    assert 100 * profile.parameter_fraction(depth) == pytest.approx(shares[0], abs=0.1)
    assert 100 * profile.mac_fraction(depth) == pytest.approx(shares[1], abs=0.5)


def test_paper_tiers_upload_55_8_percent_of_the_model_per_device() -> None:
    fractions = arch.parameter_fractions("resnet", 56, 100, 3)
    tiers = [(8, 2), (12, 2), (16, 2), (18, 2), (21, 2), (23, 2), (25, 2), (27, 6)]
    devices = sum(c for _, c in tiers)
    mean_share = sum(fractions[d] * c for d, c in tiers) / devices
    assert 100 * mean_share == pytest.approx(55.8, abs=0.1)


def test_paper_pi_depths_are_the_35_and_15_percent_prefixes() -> None:
    profile = arch.profile("resnet", 56, 100, 3, 32)
    assert arch.closest_depth_to_parameter_share(profile, 0.35) in (19, 20)
    assert arch.closest_depth_to_parameter_share(profile, 0.15) in (13, 14)


def test_costs_grow_with_depth() -> None:
    profile = arch.profile("resnet", 32, 10, 1, 28)
    for f in (profile.parameters, profile.macs, profile.activations, profile.state_bytes):
        values = [f(k) for k in range(profile.num_blocks + 1)]
        assert values == sorted(values)
        assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    "args",
    [
        ("vit", 20, 10, 3, 32),
        ("resnet", 18, 10, 3, 32),
        ("resnet", 20, 0, 3, 32),
        ("resnet", 20, 10, 3, 0),
    ],
)
def test_invalid_model_description_is_rejected(args: tuple[str, int, int, int, int]) -> None:
    with pytest.raises(ValueError):
        arch.profile(*args)


def test_depth_outside_the_model_is_rejected() -> None:
    profile = arch.profile("resnet", 8, 10, 1, 8)
    with pytest.raises(ValueError, match="depth"):
        profile.parameters(4)
