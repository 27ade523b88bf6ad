"""The depth-flexible ResNet: every prefix is a model, names and shortcuts are as promised."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flextrain.api.catalog import RESNET_LAYERS, num_blocks
from flextrain.core.models import FlexResNet, ModelSpec, build_model

SHAPES = [(1, 28), (1, 8), (3, 32)]


@pytest.mark.parametrize(("channels", "size"), SHAPES)
@pytest.mark.parametrize("layers", [8, 20])
def test_forward_gives_logits_at_every_depth(layers: int, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model("resnet", layers, 7, channels)
    x = torch.randn(2, channels, size, size)
    for depth in [*range(model.num_blocks + 1), None]:
        logits = model(x, depth)
        assert logits.shape == (2, 7)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("layers", RESNET_LAYERS)
def test_block_count_matches_the_catalog(layers: int) -> None:
    model = build_model("resnet", layers, 10, 3)
    assert model.num_blocks == num_blocks("resnet", layers) == (layers - 2) // 2


def test_state_dict_names_are_stem_blocks_and_head() -> None:
    model = build_model("resnet", 8, 10, 1)
    prefixes = {key.split(".")[0] for key in model.state_dict()}
    assert prefixes == {"stem", "blocks", "head"}
    assert {k.split(".")[1] for k in model.state_dict() if k.startswith("blocks.")} == {
        "0",
        "1",
        "2",
    }
    assert "head.fc.weight" in model.state_dict()
    assert "stem.bn.running_mean" in model.state_dict()


@pytest.mark.parametrize(("channels", "size", "final"), [(1, 8, 2), (1, 28, 7), (3, 32, 8)])
def test_head_sees_64_channels_at_final_resolution_at_every_depth(
    channels: int, size: int, final: int
) -> None:
    model = build_model("resnet", 20, 5, channels)
    seen: list[tuple[int, ...]] = []

    def hook(_module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        seen.append(tuple(args[0].shape))

    model.head.register_forward_pre_hook(hook)
    for depth in range(model.num_blocks + 1):
        model(torch.randn(2, channels, size, size), depth)
    assert set(seen) == {(2, 64, final, final)}


def test_forward_features_are_what_the_head_pools() -> None:
    model = build_model("resnet", 8, 5, 1).eval()
    x = torch.randn(2, 1, 28, 28)
    for depth in range(4):
        features = model.forward_features(x, depth)
        assert features.shape == (2, 64, 7, 7)
        torch.testing.assert_close(model.head(features), model(x, depth))


def test_depth_k_output_ignores_deeper_blocks() -> None:
    torch.manual_seed(0)
    model = build_model("resnet", 20, 5, 1).eval()
    x = torch.randn(3, 1, 8, 8)
    before = model(x, 4)
    with torch.no_grad():
        for block in model.block_list[4:]:
            for p in block.parameters():
                p.add_(torch.randn_like(p))
    assert torch.equal(model(x, 4), before)
    assert not torch.allclose(model(x, 9), before)


def test_forward_multi_matches_separate_forwards() -> None:
    torch.manual_seed(0)
    model = build_model("resnet", 20, 5, 3).eval()
    x = torch.randn(2, 3, 16, 16)
    multi = model.forward_multi(x, [7, 2, 0, 9])
    assert sorted(multi) == [0, 2, 7, 9]
    for depth, logits in multi.items():
        torch.testing.assert_close(logits, model(x, depth))


def test_forward_multi_runs_no_block_beyond_the_deepest_requested() -> None:
    model = build_model("resnet", 20, 5, 1)
    ran: list[int] = []
    for i, block in enumerate(model.block_list):
        block.register_forward_hook(lambda *_args, i=i: ran.append(i))
    model.forward_multi(torch.randn(2, 1, 8, 8), [2, 3])
    assert ran == [0, 1, 2]


@pytest.mark.parametrize("depth", [-1, 4, 1.5, True])
def test_out_of_range_depth_is_rejected(depth: object) -> None:
    model = build_model("resnet", 8, 10, 1)
    with pytest.raises(ValueError, match="depth"):
        model(torch.randn(1, 1, 8, 8), depth)


def test_gradients_reach_only_the_active_prefix() -> None:
    torch.manual_seed(0)
    model = build_model("resnet", 20, 5, 1)
    loss = model(torch.randn(4, 1, 8, 8), 4).pow(2).sum()
    torch.autograd.backward(loss)
    for name, p in model.named_parameters():
        active = int(name.split(".")[1]) < 4 if name.startswith("blocks.") else True
        assert (p.grad is not None) == active, name


def test_model_spec_builds_the_described_model() -> None:
    spec = ModelSpec("resnet", 20, 10, 3, 32)
    model = spec.build()
    assert isinstance(model, FlexResNet)
    assert spec.num_blocks == model.num_blocks == 9
    assert model.head.fc.out_features == 10
    assert spec.profile().num_blocks == 9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"family": "mlp"},
        {"layers": 18},
        {"num_classes": 0},
        {"in_channels": -1},
        {"image_size": 0},
    ],
)
def test_invalid_model_spec_is_rejected(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "family": "resnet",
        "layers": 8,
        "num_classes": 10,
        "in_channels": 1,
        "image_size": 8,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        ModelSpec(**args)  # type: ignore[arg-type]
