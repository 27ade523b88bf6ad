"""Export one tier's sub-model (only its prefix tensors) and load it back for inference.

An export is two files: `<name>.safetensors` (the depth-k prefix: stem, blocks
0..k-1, head) and `<name>.json` (model family, layers, depth, classes, input shape,
parameter count, accuracy, normalisation). Loading needs nothing else:

    from flextrain.core.export import load_submodel
    model, meta = load_submodel("runs/quickstart/models/weak.safetensors")
    logits = model(images)            # images: (B, C, H, W), normalised as meta says
    predictions = logits.argmax(dim=1)

`load_submodel` returns a module whose `forward` always runs at the exported depth.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flextrain.core.arch import profile
from flextrain.core.models import FlexResNet, ModelSpec
from flextrain.core.partition import extract_prefix, load_prefix


class SubModel(nn.Module):
    """A FlexResNet fixed at one depth; only the prefix tensors are loaded."""

    def __init__(self, model: FlexResNet, depth: int) -> None:
        super().__init__()
        self.model = model
        self.depth = model.check_depth(depth)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.model(x, depth=self.depth)  # (B, classes)
        return logits


def export_submodel(
    global_state: Mapping[str, Tensor],
    spec: ModelSpec,
    depth: int,
    path: Path,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the depth-`depth` prefix of `global_state` and its metadata next to it."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in extract_prefix(global_state, list(global_state), depth).items()}
    arch = profile(spec.family, spec.layers, spec.num_classes, spec.in_channels, spec.image_size)
    meta = {
        "format": "flextrain-submodel/v1",
        "family": spec.family,
        "layers": spec.layers,
        "depth": depth,
        "num_blocks": spec.num_blocks,
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
        "parameters": arch.parameters(depth),
        "parameter_share": arch.parameter_fraction(depth),
        "tensors": len(tensors),
        **dict(extra or {}),
    }
    save_file(tensors, str(path), metadata={"flextrain": json.dumps(meta)})
    meta_path = path.with_suffix(".json")
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path, meta_path


def load_submodel(path: str | Path, device: str | torch.device = "cpu") -> tuple[SubModel, dict[str, Any]]:
    """Load an exported sub-model for inference (eval mode)."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    spec = ModelSpec(meta["family"], meta["layers"], meta["num_classes"], meta["in_channels"], meta["image_size"])
    model = spec.build()
    load_prefix(model, load_file(str(path)), meta["depth"], strict=True)
    sub = SubModel(model, meta["depth"]).to(device).eval()
    return sub, meta
