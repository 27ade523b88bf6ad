"""The depth-k sub-model's state-dict keys, and moving prefixes in and out of models."""

from __future__ import annotations

import pytest
import torch

from flextrain.core.models import build_model
from flextrain.core.partition import (
    PrefixMismatch,
    block_index,
    extract_prefix,
    load_prefix,
    prefix_keys,
    tensor_bytes,
)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _expected_keys(depth: int) -> set[str]:
    keys = {"stem.conv.weight", "head.fc.weight", "head.fc.bias"}
    keys |= {f"stem.bn.{b}" for b in BN}
    for i in range(depth):
        keys |= {f"blocks.{i}.conv1.weight", f"blocks.{i}.conv2.weight"}
        keys |= {f"blocks.{i}.bn{j}.{b}" for j in (1, 2) for b in BN}
    return keys


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_prefix_keys_are_stem_first_blocks_and_head_with_bn_buffers(depth: int) -> None:
    model = build_model("resnet", 8, 10, 1)
    keys = prefix_keys(model, depth)
    assert set(keys) == _expected_keys(depth)
    assert keys == [k for k in model.state_dict() if k in set(keys)]  # state-dict order


def test_prefix_keys_from_a_key_list_equal_those_from_the_model() -> None:
    model = build_model("resnet", 20, 10, 1)
    names = list(model.state_dict())
    for depth in range(model.num_blocks + 1):
        assert prefix_keys(names, depth) == prefix_keys(model, depth)


def test_block_index_parses_only_known_prefixes() -> None:
    assert block_index("blocks.12.conv1.weight") == 12
    assert block_index("stem.conv.weight") is None
    assert block_index("head.fc.bias") is None
    with pytest.raises(PrefixMismatch):
        block_index("classifier.weight")


def test_depth_beyond_the_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="depth"):
        prefix_keys(build_model("resnet", 8, 10, 1), 4)


def test_extract_prefix_returns_independent_copies() -> None:
    model = build_model("resnet", 8, 10, 1)
    state = model.state_dict()
    prefix = extract_prefix(state, model, 1)
    assert set(prefix) == _expected_keys(1)
    prefix["stem.conv.weight"].add_(1.0)
    assert not torch.equal(prefix["stem.conv.weight"], model.stem.conv.weight)


def test_extract_prefix_names_a_missing_tensor() -> None:
    model = build_model("resnet", 8, 10, 1)
    state = dict(model.state_dict())
    del state["blocks.0.bn1.running_var"]
    with pytest.raises(PrefixMismatch, match=r"blocks\.0\.bn1\.running_var"):
        extract_prefix(state, model, 2)
    assert set(extract_prefix(state, None, 0)) == _expected_keys(0)


def test_load_prefix_copies_the_prefix_and_leaves_deeper_blocks_alone() -> None:
    torch.manual_seed(0)
    source = build_model("resnet", 8, 10, 1)
    target = build_model("resnet", 8, 10, 1)
    deep_before = {
        k: v.clone() for k, v in target.state_dict().items() if k.startswith("blocks.2.")
    }
    tensors = extract_prefix(source.state_dict(), source, 2)
    snapshot = {k: v.clone() for k, v in tensors.items()}
    load_prefix(target, tensors, 2)
    for key, value in tensors.items():
        assert torch.equal(target.state_dict()[key], value)
        assert torch.equal(value, snapshot[key])  # input not mutated
    for key, value in deep_before.items():
        assert torch.equal(target.state_dict()[key], value)


def test_strict_load_rejects_tensors_outside_the_prefix() -> None:
    model = build_model("resnet", 8, 10, 1)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PrefixMismatch, match="outside the depth-1 prefix"):
        load_prefix(model, full, 1)
    load_prefix(model, full, 1, strict=False)  # extras ignored when not strict


def test_missing_or_misshapen_tensors_are_rejected_and_the_model_is_unchanged() -> None:
    model = build_model("resnet", 8, 10, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = {k: torch.zeros_like(v) for k, v in extract_prefix(before, model, 1).items()}
    tensors["head.fc.bias"] = torch.zeros(11)
    with pytest.raises(PrefixMismatch, match=r"head\.fc\.bias"):
        load_prefix(model, tensors, 1)
    del tensors["head.fc.bias"]
    for strict in (True, False):
        with pytest.raises(PrefixMismatch, match="misses"):
            load_prefix(model, tensors, 1, strict=strict)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_tensor_bytes_counts_numel_times_element_size() -> None:
    tensors = {
        "a": torch.zeros(3, 4),
        "b": torch.zeros(2, dtype=torch.int64),
        "c": torch.zeros(5, dtype=torch.float16),
    }
    assert tensor_bytes(tensors) == 12 * 4 + 2 * 8 + 5 * 2
