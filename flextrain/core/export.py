"""Export one tier's sub-model (only its prefix tensors) and load it back for inference.

An export is two files: `<name>.safetensors` (the depth-k prefix: stem, blocks
0..k-1, head) and `<name>.json` (model family, layers, family options, depth, classes,
input shape, parameter count, accuracy, normalisation). Loading needs nothing else:

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

from flextrain.core.flexmodel import FlexModel
from flextrain.core.models import ModelSpec
from flextrain.core.partition import extract_prefix, load_prefix


class SubModel(nn.Module):
    """A depth-flexible model fixed at one depth; only the prefix tensors are loaded."""

    def __init__(self, model: FlexModel, depth: int) -> None:
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
    arch = spec.profile()
    meta = {
        "format": "flextrain-submodel/v1",
        **spec.to_dict(),
        "depth": depth,
        "num_blocks": spec.num_blocks,
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
    spec = ModelSpec.from_dict(meta)
    model = spec.build()
    load_prefix(model, load_file(str(path)), meta["depth"], strict=True)
    sub = SubModel(model, meta["depth"]).to(device).eval()
    return sub, meta
