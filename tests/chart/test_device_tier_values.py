"""DeviceTiers from the chart's values are what the user wrote: `deviceTiers.tiers` is a
list, which Helm replaces as a whole, so a user's nodeSelector, tolerations and
resources are never merged with a default tier's (with the earlier map of tiers,
`factory.local/pool: cpu` became `{factory.local/pool: cpu, flextrain.dev/pool: cpu}`,
which matched no node). The old map layout fails with how to rewrite it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flextrain import __version__
from flextrain.api.devicetier import DeviceTier
from flextrain.api.schema_check import crd_violations
from tests.chart.chart import CHART, CI_VALUES, Tools, documents, of_kind, run, value_args

pytestmark = pytest.mark.timeout(120)

CUDA = f"ghcr.io/flextrain/flextrain:{__version__}-cuda"
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())["deviceTiers"]["tiers"]


def rendered_tiers(tools: Tools, tmp: Path, *values: dict[str, Any] | Path, sets: tuple[str, ...] = ()) -> dict[str, Any]:
    """name -> spec of the DeviceTiers `helm template` renders with these values."""
    args = [a for s in sets for a in ("--set", s)]
    proc = run([tools.helm, "template", "ft", CHART, *value_args(values, tmp), *args])
    assert proc.returncode == 0, proc.stderr
    tiers = of_kind(documents(proc.stdout), "DeviceTier")
    for tier in tiers:
        assert crd_violations(tier, "DeviceTier") == [], tier
        DeviceTier.model_validate(tier)
    return {t["metadata"]["name"]: t["spec"] for t in tiers}


def enabled(*tiers: dict[str, Any]) -> dict[str, Any]:
    return {"deviceTiers": {"enabled": True, "tiers": list(tiers)}}


def test_a_tiers_node_selector_is_the_users_not_merged_with_the_default(tools: Tools, tmp_path: Path) -> None:
    """The reported case: the cpu-x86 tier moved to the factory's own pool label."""
    mine = {"architecture": "amd64", "nodeSelector": {"factory.local/pool": "cpu"}}
    tiers = rendered_tiers(tools, tmp_path, enabled({"name": "cpu-x86", "spec": mine}))
    assert tiers == {"cpu-x86": mine}
    assert tiers["cpu-x86"]["nodeSelector"] == {"factory.local/pool": "cpu"}


def test_tolerations_and_resources_are_the_users(tools: Tools, tmp_path: Path) -> None:
    """The edge tier with another taint and requests only: none of the default's
    toleration or limits come back."""
    mine = {
        "architecture": "arm64",
        "nodeSelector": {"flextrain.dev/pool": "edge"},
        "tolerations": [{"key": "factory.local/line", "operator": "Exists", "effect": "NoExecute"}],
        "resources": {"requests": {"cpu": "250m"}},
    }
    tiers = rendered_tiers(tools, tmp_path, enabled({"name": "arm-edge", "spec": mine}))
    assert tiers == {"arm-edge": mine}


def test_an_empty_field_stays_empty(tools: Tools, tmp_path: Path) -> None:
    """A GPU tier whose nodes carry no taint: no tolerations, no nodeSelector."""
    mine = {"architecture": "amd64", "accelerator": {"type": "nvidia.com/gpu", "count": 1}}
    tiers = rendered_tiers(tools, tmp_path, enabled({"name": "gpu", "spec": mine}))
    assert tiers == {"gpu": {**mine, "image": CUDA}}


def test_the_users_list_replaces_the_defaults_and_a_later_file_the_earlier(tools: Tools, tmp_path: Path) -> None:
    first = enabled({"name": "a", "spec": {"nodeSelector": {"pool": "a"}}}, {"name": "b", "spec": {}})
    second = {"deviceTiers": {"tiers": [{"name": "c", "spec": {"nodeSelector": {"pool": "c"}}}]}}
    assert rendered_tiers(tools, tmp_path, first) == {"a": {"nodeSelector": {"pool": "a"}}, "b": {}}
    assert rendered_tiers(tools, tmp_path, first, second) == {"c": {"nodeSelector": {"pool": "c"}}}


def test_set_on_the_command_line_gives_exactly_the_tiers_it_names(tools: Tools, tmp_path: Path) -> None:
    """`--set deviceTiers.tiers[0]...` builds a new list too: only that tier, only those fields."""
    tiers = rendered_tiers(tools, tmp_path, sets=(
        "deviceTiers.enabled=true",
        "deviceTiers.tiers[0].name=cpu-x86",
        "deviceTiers.tiers[0].spec.nodeSelector.factory\\.local/pool=cpu",
    ))
    assert tiers == {"cpu-x86": {"nodeSelector": {"factory.local/pool": "cpu"}}}


def test_without_tiers_in_the_users_values_the_defaults_are_created(tools: Tools, tmp_path: Path) -> None:
    tiers = rendered_tiers(tools, tmp_path, {"deviceTiers": {"enabled": True}})
    assert list(tiers) == [t["name"] for t in DEFAULTS] == ["gpu", "cpu-x86", "arm-edge"]
    assert tiers["cpu-x86"] == next(t["spec"] for t in DEFAULTS if t["name"] == "cpu-x86")


WITH_TIERS = [p for p in CI_VALUES if yaml.safe_load(p.read_text()).get("deviceTiers", {}).get("enabled")]


def test_a_shipped_value_file_creates_tiers() -> None:
    assert [p.stem for p in WITH_TIERS] == ["tiers-values"]


@pytest.mark.parametrize("path", WITH_TIERS, ids=lambda p: p.stem)
def test_every_shipped_tier_is_rendered_as_written(tools: Tools, tmp_path: Path, path: Path) -> None:
    written = yaml.safe_load(path.read_text())["deviceTiers"]
    tiers = rendered_tiers(tools, tmp_path, path)
    for tier in written.get("tiers", DEFAULTS):
        spec = tiers[tier["name"]]
        if tier["spec"].get("accelerator", {}).get("type") == "nvidia.com/gpu" and "image" not in tier["spec"]:
            assert spec.pop("image") == CUDA
        assert spec == tier["spec"], tier["name"]


def test_the_old_map_of_tiers_fails_with_how_to_write_the_list(tools: Tools, tmp_path: Path) -> None:
    old = {"deviceTiers": {"enabled": True, "tiers": {
        "cpu-x86": {"enabled": True, "spec": {"nodeSelector": {"factory.local/pool": "cpu"}}},
        "gpu": {"enabled": False, "spec": {}},
    }}}
    proc = run([tools.helm, "template", "ft", CHART, *value_args([old], tmp_path)])
    assert proc.returncode != 0, "the old layout was accepted"
    assert "deviceTiers.tiers is a list of {name, spec} now, not a map" in proc.stderr, proc.stderr
    assert "tiers: [{name: cpu-x86, spec: {nodeSelector:" in proc.stderr, proc.stderr


def test_the_old_map_fails_even_with_device_tiers_disabled(tools: Tools, tmp_path: Path) -> None:
    """A values file of the old layout is a mistake to point out, not to ignore."""
    old = {"deviceTiers": {"enabled": False, "tiers": {"gpu": {"enabled": True, "spec": {}}}}}
    proc = run([tools.helm, "template", "ft", CHART, *value_args([old], tmp_path)])
    assert proc.returncode != 0 and "is a list of {name, spec} now" in proc.stderr, proc.stderr


def test_a_tier_name_given_twice_is_refused(tools: Tools, tmp_path: Path) -> None:
    twice = enabled({"name": "cpu", "spec": {}}, {"name": "gpu", "spec": {}}, {"name": "cpu", "spec": {}})
    proc = run([tools.helm, "template", "ft", CHART, *value_args([twice], tmp_path)])
    assert proc.returncode != 0
    assert 'deviceTiers.tiers[2]: the name "cpu" is given twice' in proc.stderr, proc.stderr
