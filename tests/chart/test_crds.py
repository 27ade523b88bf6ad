"""The chart's CRDs are the generated ones: the template files are what `flextrain crds`
writes, and what Helm renders from them equals crds/ apart from Helm's labels and the
keep annotation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from flextrain.api import crdgen
from tests.chart.chart import CHART, REPO, Tools, documents, of_kind, run, value_args

pytestmark = pytest.mark.timeout(60)

CHART_CRDS = CHART / "templates" / "crds"


def test_chart_crd_templates_are_fresh() -> None:
    """`flextrain crds` writes them (and `flextrain crds --check` fails when stale)."""
    expected = crdgen.chart_files()
    assert sorted(p.name for p in CHART_CRDS.glob("*.yaml")) == sorted(expected)
    for name, text in expected.items():
        assert (CHART_CRDS / name).read_text() == text, f"{name} is stale: run `flextrain crds`"


def test_rendered_crds_equal_the_generated_crds(render: Callable[..., str]) -> None:
    rendered = {c["metadata"]["name"]: c for c in of_kind(documents(render()), "CustomResourceDefinition")}
    committed = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        committed[crd["metadata"]["name"]] = crd
    assert sorted(rendered) == sorted(committed) == ["devicetiers.flextrain.dev", "flextrainjobs.flextrain.dev"]
    for name, crd in committed.items():
        chart = rendered[name]
        assert chart["spec"] == crd["spec"], name
        assert {k: v for k, v in chart.items() if k != "metadata"} == {
            k: v for k, v in crd.items() if k != "metadata"}
        assert crd["metadata"]["labels"].items() <= chart["metadata"]["labels"].items()
        assert chart["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert chart["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


@pytest.mark.parametrize(("values", "crds", "annotations"), [
    pytest.param({"crds": {"enabled": False}}, 0, None, id="disabled"),
    pytest.param({"crds": {"keep": False}}, 2, None, id="not-kept"),
    pytest.param({"crds": {"keep": False, "annotations": {"team": "ml"}}}, 2, {"team": "ml"},
                 id="own-annotations"),
])
def test_crd_values(tools: Tools, tmp_path: Path, values: dict[str, object], crds: int,
                    annotations: dict[str, str] | None) -> None:
    proc = run([tools.helm, "template", "ft", CHART, *value_args([values], tmp_path)])
    assert proc.returncode == 0, proc.stderr
    found = of_kind(documents(proc.stdout), "CustomResourceDefinition")
    assert len(found) == crds
    for crd in found:
        assert crd["metadata"].get("annotations") == annotations
