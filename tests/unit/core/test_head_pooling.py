"""Where the shared head of a ResNet prefix pools, and the two research options.

The paper's model (the default) carries a shallow prefix's features through the skipped
downsampling blocks' option-A shortcuts before pooling; those shortcuts subsample, so a
prefix that ends in stage 1 pools 1/16 of its positions. ``pool_at_prefix`` pools the
prefix's own map; ``stage_adapters`` maps the pooled channels with a per-stage linear
map instead of the zero padding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flextrain.core.families import RESNET_RESEARCH_OPTIONS, normalise_options
from flextrain.core.models import FlexResNet, Head, ModelSpec, channel_offset
from flextrain.core.models import trainable_parameter_count as count

POOL = (("pool_at_prefix", 1),)
ADAPT = (("stage_adapters", 1),)


def _features(model: FlexResNet, x: torch.Tensor, depth: int) -> torch.Tensor:
    h = model.stem(x)
    for block in model.blocks[:depth]:
        h = block(h)
    return h


def test_default_head_pools_every_fourth_row_and_column_of_a_stage_1_prefix() -> None:
    torch.manual_seed(0)
    model = ModelSpec("resnet", 20, 10, 1, 28).build().eval()
    assert isinstance(model, FlexResNet)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        h = _features(model, x, 2)  # (2, 16, 28, 28): ends in stage 1 (blocks 0..2)
        assert h.shape == (2, 16, 28, 28)
        pooled_by_hand = h[:, :, ::4, ::4].mean(dim=(2, 3))  # 7 x 7 = 1/16 of the positions
        embedded = F.pad(pooled_by_hand, (24, 24))  # 16 -> 32 pads 8 in front, 32 -> 64 pads 16
        torch.testing.assert_close(model.head.fc(embedded), model(x, 2))
        # ...and it is not the mean over all positions.
        full = F.pad(h.mean(dim=(2, 3)), (24, 24))
        assert not torch.allclose(model.head.fc(full), model(x, 2))


def test_pool_at_prefix_averages_every_position_and_keeps_the_tensors() -> None:
    torch.manual_seed(0)
    plain = ModelSpec("resnet", 20, 10, 1, 28).build().eval()
    torch.manual_seed(0)
    pooled = ModelSpec("resnet", 20, 10, 1, 28, POOL).build().eval()
    assert isinstance(pooled, FlexResNet)
    assert plain.state_dict().keys() == pooled.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(value, pooled.state_dict()[key])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        for depth, off in ((2, 24), (5, 16)):  # stage 1: 16 channels, stage 2: 32
            h = _features(pooled, x, depth)
            want = pooled.head.fc(F.pad(h.mean(dim=(2, 3)), (off, 64 - h.shape[1] - off)))
            torch.testing.assert_close(pooled(x, depth), want)
            assert not torch.allclose(pooled(x, depth), plain(x, depth))
        for depth in (7, 9):  # prefixes ending in stage 3: no shortcut subsamples after them
            torch.testing.assert_close(pooled(x, depth), plain(x, depth))


@pytest.mark.parametrize(("c_in", "offset"), [(16, 24), (32, 16), (64, 0)])
def test_channel_offset_follows_the_shortcuts_zero_padding(c_in: int, offset: int) -> None:
    assert channel_offset(c_in, 64) == offset
    torch.manual_seed(0)
    model = ModelSpec("resnet", 20, 10, 1, 8).build()
    assert isinstance(model, FlexResNet)
    h = torch.randn(1, c_in, 8, 8)
    depth = {16: 3, 32: 6, 64: 9}[c_in]
    carried = model.skip_rest(h, depth)
    assert carried.shape[1] == 64
    nonzero = carried.abs().sum(dim=(0, 2, 3)) > 0
    assert nonzero.nonzero().flatten().tolist() == list(range(offset, offset + c_in))


def test_stage_adapters_count_start_as_padding_and_draw_no_random_numbers() -> None:
    torch.manual_seed(0)
    plain = ModelSpec("resnet", 20, 10, 1, 28).build().eval()
    torch.manual_seed(0)
    spec = ModelSpec("resnet", 20, 10, 1, 28, ADAPT)
    adapted = spec.build().eval()
    extra = 16 * 64 + 32 * 64
    assert count(adapted) - count(plain) == extra == 3072
    assert spec.profile().parameters() == count(adapted)
    assert list(adapted.state_dict()) == spec.profile().tensor_names()
    assert [k for k in adapted.state_dict() if k not in plain.state_dict()] == [
        "head.adapters.0.weight",
        "head.adapters.1.weight",
    ]
    for key, value in plain.state_dict().items():  # same seed, same draws
        assert torch.equal(value, adapted.state_dict()[key])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for depth in range(10):
            torch.testing.assert_close(adapted(x, depth), plain(x, depth))


def test_affine_adapters_are_96_values_that_start_as_identity() -> None:
    torch.manual_seed(0)
    plain = ModelSpec("resnet", 20, 10, 1, 28).build().eval()
    torch.manual_seed(0)
    spec = ModelSpec("resnet", 20, 10, 1, 28, (("stage_adapters", 2),))
    adapted = spec.build().eval()
    assert count(adapted) - count(plain) == 2 * (16 + 32) == 96
    assert spec.profile().parameters() == count(adapted)
    assert list(adapted.state_dict()) == spec.profile().tensor_names()
    assert [k for k in adapted.state_dict() if k not in plain.state_dict()] == [
        "head.adapters.0.weight",
        "head.adapters.0.bias",
        "head.adapters.1.weight",
        "head.adapters.1.bias",
    ]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for depth in range(10):
            torch.testing.assert_close(adapted(x, depth), plain(x, depth))
        head = adapted.head
        assert isinstance(head, Head) and head.adapters is not None
        head.adapters[0].weight.fill_(2.0)
        head.adapters[0].bias.fill_(0.5)
        assert isinstance(adapted, FlexResNet)
        h = _features(adapted, x, 2)  # ends in stage 1: 16 channels, placed at 24..39
        pooled = h[:, :, ::4, ::4].mean(dim=(2, 3)) * 2.0 + 0.5
        torch.testing.assert_close(adapted(x, 2), head.fc(F.pad(pooled, (24, 24))))
        torch.testing.assert_close(adapted(x, 8), plain(x, 8))  # stage 3: no adapter


def test_stage_adapter_is_what_a_shallow_prefix_reads_once_trained() -> None:
    torch.manual_seed(0)
    model = ModelSpec("resnet", 20, 10, 1, 8, (*ADAPT, *POOL)).build().eval()
    assert isinstance(model, FlexResNet)
    head = model.head
    assert isinstance(head, Head) and head.adapters is not None
    with torch.no_grad():
        head.adapters[0].weight.normal_()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        h = _features(model, x, 1)
        want = head.fc(h.mean(dim=(2, 3)) @ head.adapters[0].weight.T)
        torch.testing.assert_close(model(x, 1), want)
        before = model(x, 7)
        head.adapters[1].weight.normal_()  # stage 2's adapter: no effect on a stage-3 prefix
        torch.testing.assert_close(model(x, 7), before)


def test_options_only_take_their_values_and_zero_is_the_default() -> None:
    assert set(RESNET_RESEARCH_OPTIONS) == {"pool_at_prefix", "stage_adapters"}
    assert normalise_options("resnet", {"pool_at_prefix": 0, "stage_adapters": 0}) == ()
    assert ModelSpec("resnet", 20, 10, 1, 8, {"pool_at_prefix": 0}) == ModelSpec(
        "resnet", 20, 10, 1, 8
    )
    with pytest.raises(ValueError, match="pool_at_prefix must be one of"):
        normalise_options("resnet", {"pool_at_prefix": 2})
    with pytest.raises(ValueError, match="pool_at_prefix must be one of"):
        normalise_options("resnet", {"pool_at_prefix": 1.0})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="stage_adapters must be one of"):
        normalise_options("resnet", {"stage_adapters": True})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="stage_adapters must be one of"):
        normalise_options("resnet", {"stage_adapters": 3})
    with pytest.raises(ValueError, match="resnet takes no option"):
        normalise_options("resnet", {"heads": 2})


@pytest.mark.parametrize(
    ("stage_blocks", "layers"), [((1, 1, 1), 8), ((3, 3, 3), 20), ((2, 1, 1), 10)]
)
def test_stage_blocks_build_standalone_resnets_of_other_sizes(
    stage_blocks: tuple[int, int, int], layers: int
) -> None:
    model = FlexResNet(20, 10, 1, stage_blocks=stage_blocks)
    assert model.layers == layers
    assert model.num_blocks == sum(stage_blocks)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    if stage_blocks[0] == stage_blocks[1] == stage_blocks[2]:
        same = ModelSpec("resnet", layers, 10, 1, 8).build()
        assert count(model) == count(same)
    with pytest.raises(ValueError, match="stage_blocks"):
        FlexResNet(20, 10, 1, stage_blocks=(1, 0, 1))


@pytest.mark.parametrize("options", [POOL, ADAPT, (*ADAPT, *POOL), (("stage_adapters", 2),)])
def test_options_run_through_the_federated_simulation_and_its_bytes(
    options: tuple[tuple[str, int], ...],
) -> None:
    from flextrain.core.simulator import simulate
    from tests.unit.core.conftest import make_blobs

    spec = ModelSpec("resnet", 8, 4, 1, 8, options)
    train, test = make_blobs(n_train=64, n_test=16)
    tiers = [(1, 2), (3, 1)]
    result = simulate(spec, train, test, tiers, rounds=1, local_epochs=1, batch_size=32)
    profile = spec.profile()
    record = result.rounds[0]
    for depth, devices in tiers:  # the adapters travel with the head, at every depth
        assert record.bytes_up[depth] == devices * profile.state_bytes(depth)
    state = result.final_states[0]
    torch.manual_seed(0)
    initial = spec.build().state_dict()
    if "stage_adapters" in dict(options):
        linear = dict(options)["stage_adapters"] == 1
        assert state["head.adapters.1.weight"].shape == ((64, 32) if linear else (32,))
        # The k = 1 devices read stage 0's adapter; the k = 3 device's distillation
        # student (depth 2, ending in stage 2) reads stage 1's: both moved.
        for key in ("head.adapters.0.weight", "head.adapters.1.weight"):
            assert not torch.equal(state[key], initial[key])
    else:
        assert not any("adapters" in key for key in state)
