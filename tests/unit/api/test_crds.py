"""The generated CRDs: fresh, structural, documented, and saying what the models say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flextrain.api import crdgen
from flextrain.api.schema_check import crd_violations, rule_violations
from tests.factories import make_job, make_tier

REPO = Path(__file__).resolve().parents[3]


def test_committed_crds_match_a_fresh_generation() -> None:
    for name, text in crdgen.generated_files().items():
        committed = REPO / "crds" / name
        assert committed.is_file(), f"{committed} is missing: run `flextrain crds`"
        assert committed.read_text() == text, f"{committed} is stale: run `flextrain crds`"
    reference = REPO / "docs" / "api.md"
    assert reference.read_text() == crdgen.render_reference(), "docs/api.md is stale: run `flextrain crds`"


def _nodes(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path or "<root>", schema)]
    for name, sub in schema.get("properties", {}).items():
        out += _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out += _nodes(schema[key], f"{path}[{key}]")
    return out


@pytest.mark.parametrize("info", crdgen.RESOURCES, ids=lambda i: i.kind)
def test_schema_is_structural(info: crdgen.CrdInfo) -> None:
    schema = crdgen.openapi_schema(info.model)
    text = yaml.safe_dump(schema)
    assert "$ref" not in text and "$defs" not in text
    for path, node in _nodes(schema):
        assert node.get("type") != "null", path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert node.get("type") in {
                "object",
                "array",
                "string",
                "integer",
                "number",
                "boolean",
            }, path
            assert "anyOf" not in node and "oneOf" not in node, path
        assert "default" not in node or node["default"] is not None, path


@pytest.mark.parametrize("info", crdgen.RESOURCES, ids=lambda i: i.kind)
def test_every_spec_and_status_field_is_described_by_name(info: crdgen.CrdInfo) -> None:
    schema = crdgen.openapi_schema(info.model)
    for part in ("spec", "status"):
        for path, node in _nodes(schema["properties"][part], part):
            field = path.rsplit(".", 1)[-1]
            if "[" in field or path == part:
                continue
            desc = node.get("description", "")
            assert desc.startswith(f"{field}:"), f"{path}: description must start with '{field}:'"


def test_crd_metadata() -> None:
    job = crdgen.crd_for_kind("FlexTrainJob")["spec"]
    tier = crdgen.crd_for_kind("DeviceTier")["spec"]
    assert job["scope"] == "Namespaced" and tier["scope"] == "Cluster"
    assert job["names"]["shortNames"] == ["ftj"] and tier["names"]["shortNames"] == ["dt"]
    assert "flextrain" in job["names"]["categories"]
    version = job["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Round", "Tiers Ready", "Best Accuracy", "Accuracy", "Age"]
    columns = [c["name"] for c in tier["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Arch", "Accelerator", "Nodes", "Age"]


def test_tiers_are_immutable_once_set() -> None:
    old = make_job()
    new = make_job()
    new["spec"]["tiers"][1]["replicas"] = 5
    violations = rule_violations(new, "FlexTrainJob", old=old)
    assert [v.path for v in violations] == ["spec.tiers"]
    assert "immutable" in violations[0].message
    assert rule_violations(old, "FlexTrainJob", old=old) == []


def test_model_and_dataset_are_immutable() -> None:
    old = make_job()
    new = make_job(model={"family": "resnet", "layers": 32})
    assert "spec.model" in [v.path for v in rule_violations(new, "FlexTrainJob", old=old)]


def test_other_spec_changes_are_allowed_on_update() -> None:
    old = make_job()
    new = make_job(suspend=True, training={"rounds": 50})
    assert rule_violations(new, "FlexTrainJob", old=old) == []


def test_valid_objects_pass_the_crd() -> None:
    assert crd_violations(make_job(), "FlexTrainJob") == []
    assert crd_violations(make_tier(), "DeviceTier") == []


def test_gpu_tier_needs_a_count() -> None:
    tier = make_tier(accelerator={"type": "nvidia.com/gpu"})
    assert [v.path for v in crd_violations(tier, "DeviceTier")] == ["spec.accelerator"]


@pytest.mark.parametrize("info", crdgen.RESOURCES, ids=lambda i: i.kind)
def test_cel_rules_over_maps_and_lists_are_bounded(info: crdgen.CrdInfo) -> None:
    """kube-apiserver refuses a CRD whose CEL rules' estimated cost exceeds its budget;
    a rule that iterates a map or list without maxProperties/maxItems is estimated over
    the largest request (3 MiB of entries), which is how a label-key rule on an unbounded
    map went over (measured with apiextensions-apiserver v0.37's own validation). So every
    iterating rule sits on a bounded map or list, and strings that rules read are bounded."""
    schema = crdgen.openapi_schema(info.model)
    for path, node in _nodes(schema):
        for rule in node.get("x-kubernetes-validations", []):
            text = rule["rule"]
            if any(f"self.{f}(" in text for f in ("all", "exists", "exists_one", "map", "filter")):
                assert "maxProperties" in node or "maxItems" in node, (path, text)
            if node.get("type") == "string" and "matches(" in text:
                assert "maxLength" in node, (path, text)
