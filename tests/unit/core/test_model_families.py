"""Every model family keeps FlexTrain's contract: prefixes are models, described torch-free."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from flextrain.api.catalog import MODEL_FAMILIES, VIT_DEFAULTS
from flextrain.core import families
from flextrain.core.families import FAMILIES, normalise_options
from flextrain.core.models import BUILDERS, ModelSpec
from flextrain.core.partition import extract_prefix, prefix_keys
from flextrain.core.policy import BudgetTooSmall, deepest_depth_for_budget, training_memory

SPECS = [
    ModelSpec("resnet", 8, 10, 1, 8),
    ModelSpec("resnet", 20, 100, 3, 32),
    ModelSpec("vit", 3, 10, 1, 8),
    ModelSpec("vit", 4, 100, 3, 32, (("embed_dim", 48), ("heads", 3), ("mlp_ratio", 4), ("patch_size", 4))),
    ModelSpec("vit", 2, 10, 1, 28, (("embed_dim", 16), ("heads", 2), ("mlp_ratio", 1), ("patch_size", 7))),
]
IDS = [s.label for s in SPECS]


def test_every_family_has_a_shape_and_a_builder() -> None:
    assert set(MODEL_FAMILIES) == set(FAMILIES) == set(BUILDERS)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_forward_at_every_depth_gives_finite_logits(spec: ModelSpec) -> None:
    torch.manual_seed(0)
    model = spec.build().eval()
    x = torch.randn(3, spec.in_channels, spec.image_size, spec.image_size)
    multi = model.forward_multi(x, range(spec.num_blocks + 1))
    for k in range(spec.num_blocks + 1):
        logits = model(x, depth=k)
        assert logits.shape == (3, spec.num_classes)
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(multi[k], logits)
    # each extra block changes the output: the depth really is used
    assert not torch.allclose(model(x, depth=spec.num_blocks), model(x, depth=spec.num_blocks - 1))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_prefix_tensor_names_and_shapes_equal_the_torch_state_dict(spec: ModelSpec) -> None:
    model = spec.build()
    profile = spec.profile()
    state = model.state_dict()
    for k in range(spec.num_blocks + 1):
        names = profile.tensor_names(k)
        assert names == prefix_keys(model, k)
        shapes = [shape for u in profile.units(k) for _, shape in u.tensors]
        assert shapes == [tuple(state[n].shape) for n in names]
        if k < spec.num_blocks:
            deeper = profile.tensor_names(k + 1)
            assert set(names) < set(deeper)
            assert all(n.startswith(f"blocks.{k}.") for n in set(deeper) - set(names))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_parameter_counts_per_depth_equal_torch(spec: ModelSpec) -> None:
    model = spec.build()
    profile = spec.profile()
    params = dict(model.named_parameters())
    counts = []
    for k in range(spec.num_blocks + 1):
        keys = set(prefix_keys(model, k))
        counts.append(sum(p.numel() for n, p in params.items() if n in keys))
        assert profile.parameters(k) == counts[-1]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert profile.parameter_fraction(spec.num_blocks) == 1.0


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_macs_grow_with_depth_and_every_block_costs_work(spec: ModelSpec) -> None:
    profile = spec.profile()
    macs = [profile.macs(k) for k in range(spec.num_blocks + 1)]
    assert all(later > earlier for earlier, later in itertools.pairwise(macs))
    assert profile.mac_fraction(spec.num_blocks) == 1.0
    # every conv/linear weight of a block is used at least once per example
    for block in profile.blocks:
        weights = sum(math.prod(shape) for name, shape in block.tensors if name.endswith(".weight") and len(shape) >= 2)
        assert block.macs >= weights > 0, block.name


def _linear_macs(model: nn.Module, x: Tensor, depth: int) -> int:
    total = 0

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += module.weight.numel() * out.shape[2] * out.shape[3]
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * (out.numel() // out.shape[-1])

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model(x, depth)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("spec", [s for s in SPECS if s.family == "vit"], ids=lambda s: s.label)
def test_vit_macs_are_the_linear_work_plus_attention(spec: ModelSpec) -> None:
    model = spec.build().eval()
    profile = spec.profile()
    tokens = (spec.image_size // spec.option("patch_size")) ** 2
    attention = 2 * tokens * tokens * spec.option("embed_dim")  # QK^T and AV per block
    x = torch.randn(1, spec.in_channels, spec.image_size, spec.image_size)
    for k in range(spec.num_blocks + 1):
        assert profile.macs(k) == _linear_macs(model, x, k) + k * attention, k
    assert [profile.macs(k) for k in range(spec.num_blocks + 1)] == sorted(
        profile.macs(k) for k in range(spec.num_blocks + 1)
    )


def test_vit_memory_estimate_grows_with_depth_and_drives_depth_auto() -> None:
    spec = ModelSpec("vit", 6, 10, 1, 8)
    profile = spec.profile()
    totals = [training_memory(profile, k).total for k in range(1, 7)]
    assert totals == sorted(totals) and len(set(totals)) == 6
    budget = totals[3]  # exactly what depth 4 needs
    depth = deepest_depth_for_budget("vit", 6, 10, 1, 8, memory_bytes=budget, options=spec.options)
    assert depth == 4
    assert deepest_depth_for_budget("vit", 6, 10, 1, 8, max_parameters=profile.parameters(2)) == 2
    with pytest.raises(BudgetTooSmall, match="6-block vit"):
        deepest_depth_for_budget("vit", 6, 10, 1, 8, memory_bytes=totals[0] - 1)


def test_vit_memory_estimate_is_close_to_what_autograd_keeps() -> None:
    spec = ModelSpec("vit", 2, 10, 1, 8)
    model = spec.build().train()
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, tuple[int, ...]], int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), tuple(t.shape))] = t.numel()
        return t

    batch = 16
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 1, 8, 8), depth=2).sum()
    measured = sum(seen.values()) / batch
    estimate = spec.profile().activations(2)
    assert 0.5 * measured <= estimate <= 2.0 * measured, (estimate, measured)


@pytest.mark.parametrize(
    ("layers", "options", "image_size", "field"),
    [
        (0, {}, 8, "layers"),
        (33, {}, 8, "layers"),
        (3, {"embed_dim": 4}, 8, "embed_dim"),
        (3, {"heads": 17}, 8, "heads"),
        (3, {"embed_dim": 30, "heads": 4}, 8, "multiple of heads"),
        (3, {"patch_size": 3}, 8, "patch_size 3 must divide the image size 8"),
        (3, {"mlp_ratio": 9}, 8, "mlp_ratio"),
        (3, {"width": 9}, 8, "width"),
    ],
)
def test_bad_vit_shapes_are_rejected_naming_the_field(
    layers: int, options: dict[str, int], image_size: int, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        ModelSpec("vit", layers, 10, 1, image_size, normalise_options("vit", options))


def test_resnet_takes_no_options_and_vit_fills_defaults() -> None:
    with pytest.raises(ValueError, match="resnet takes no option"):
        normalise_options("resnet", {"heads": 2})
    assert dict(ModelSpec("vit", 3, 10, 1, 8).options) == VIT_DEFAULTS
    assert ModelSpec("resnet", 20, 10, 1, 8).options == ()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_model_identity_round_trips_through_a_dict(spec: ModelSpec) -> None:
    assert ModelSpec.from_dict(spec.to_dict()) == spec


def test_resnet_profile_is_unchanged_by_the_registry() -> None:
    from flextrain.core import arch

    direct = arch.profile("resnet", 56, 100, 3, 32)
    assert families.profile("resnet", 56, 100, 3, 32) == direct
    assert direct.parameters() == 858_868


def test_training_a_vit_prefix_touches_only_its_prefix_and_learns() -> None:
    torch.manual_seed(0)
    spec = ModelSpec("vit", 3, 4, 1, 8)
    model = spec.build()
    g = torch.Generator().manual_seed(1)
    prototypes = torch.randn(4, 1, 8, 8, generator=g)
    y = torch.randint(0, 4, (256,), generator=g)
    x = prototypes[y] + 0.5 * torch.randn(256, 1, 8, 8, generator=g)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    first = loss_fn(model(x, depth=2), y).item()
    for _ in range(30):
        opt.zero_grad()
        loss_fn(model(x, depth=2), y).backward()
        opt.step()
    last = loss_fn(model(x, depth=2), y).item()
    assert last < 0.5 * first
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == set(extract_prefix(after, model, 2))
