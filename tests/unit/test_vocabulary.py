"""One vocabulary: the API's enums, the generated CRD and the core's registries name the
same families, strategies, compressions and datasets (flextrain.api.catalog)."""

from __future__ import annotations

from typing import Any, get_args

from flextrain.api import catalog
from flextrain.api.crdgen import crd_for_kind
from flextrain.api.flextrainjob import AggregationSpec, DatasetSpec, RobustMergeSpec
from flextrain.api.model import ModelSpec, ViTSpec
from flextrain.core.families import FAMILIES
from flextrain.core.merge import ROBUST_METHODS, STRATEGIES
from flextrain.core.merge import robust as core_robust
from flextrain.core.models import BUILDERS
from flextrain.data.datasets import NORMALISATION
from flextrain.wire.tensors import compression_dtype


def _literal(model: Any, field: str) -> tuple[Any, ...]:
    return get_args(model.model_fields[field].annotation)


def _model_schema() -> dict[str, Any]:
    crd = crd_for_kind("FlexTrainJob")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model: dict[str, Any] = spec["properties"]["model"]
    return model


def test_model_families_agree_everywhere() -> None:
    names = catalog.MODEL_FAMILIES
    assert _literal(ModelSpec, "family") == names
    assert tuple(FAMILIES) == names
    assert tuple(BUILDERS) == names
    assert tuple(_model_schema()["properties"]["family"]["enum"]) == names
    assert tuple(catalog.FAMILY_OPTIONS) == names


def test_resnet_layers_agree_with_the_crd_rule() -> None:
    rules = [r["rule"] for r in _model_schema()["x-kubernetes-validations"]]
    assert f"self.family != 'resnet' || self.layers in {list(catalog.RESNET_LAYERS)}" in rules


def test_vit_limits_agree_with_the_api_and_the_crd() -> None:
    vit = _model_schema()["properties"]["vit"]["properties"]
    for name, limit in catalog.VIT_LIMITS.items():
        field = ViTSpec.model_fields[name]
        bounds = {type(m).__name__: m for m in field.metadata}
        assert (bounds["Ge"].ge, bounds["Le"].le) == (limit.low, limit.high), name
        assert field.default == catalog.VIT_DEFAULTS[name]
        wire = field.alias or name
        assert (vit[wire]["minimum"], vit[wire]["maximum"]) == (limit.low, limit.high)
    assert set(ViTSpec().options()) == set(catalog.FAMILY_OPTIONS["vit"])


def test_merge_strategies_agree() -> None:
    assert _literal(AggregationSpec, "strategy") == catalog.MERGE_STRATEGIES == STRATEGIES


def test_robust_merge_options_agree() -> None:
    assert _literal(RobustMergeSpec, "method") == catalog.ROBUST_METHODS == ROBUST_METHODS
    assert RobustMergeSpec().method == core_robust.DEFAULT_METHOD
    assert catalog.ROBUST_TRIM_FRACTION_DEFAULT == core_robust.DEFAULT_TRIM_FRACTION
    assert RobustMergeSpec().clip_multiple == catalog.ROBUST_CLIP_MULTIPLE_DEFAULT
    assert catalog.ROBUST_CLIP_MULTIPLE_DEFAULT == core_robust.DEFAULT_CLIP_MULTIPLE


def test_compressions_agree() -> None:
    assert _literal(AggregationSpec, "compression") == catalog.COMPRESSIONS
    for setting in catalog.COMPRESSIONS:  # each is a floating dtype of the wire's table
        assert compression_dtype(setting).is_floating_point


def test_datasets_agree() -> None:
    assert _literal(DatasetSpec, "name") == tuple(catalog.DATASETS)
    assert set(NORMALISATION) == set(catalog.DATASETS)
