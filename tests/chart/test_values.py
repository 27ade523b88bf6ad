"""values.yaml is documented key by key, and values.schema.json accepts the shipped value
files while Helm rejects wrong types and unknown keys with it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.chart.chart import CHART, CI_VALUES, Tools, merged_values, run, value_args

pytestmark = pytest.mark.timeout(60)

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
#: Values passed through to Kubernetes (or to the DeviceTier CRD, which checks them): their
#: own keys are Kubernetes fields, documented there, not in values.yaml.
PASS_THROUGH = (
    "resources", "podSecurityContext", "securityContext", "nodeSelector", "podAnnotations",
    "podLabels", "affinity", "crds.annotations", "serviceAccount.annotations",
    "metrics.serviceMonitor.labels",
    # A list of DeviceTier {name, spec} (docs/api.md), documented as a whole.
    "deviceTiers.tiers",
)
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/\"]+):(?: |$)")


def _pass_through(path: str) -> bool:
    return any(p.match(path) if isinstance(p, re.Pattern) else path == p for p in PASS_THROUGH)


def undocumented(text: str) -> list[str]:
    """Dotted paths of the keys of a values file whose comment block does not start
    with `# --` (keys inside pass-through values excepted)."""
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = _KEY.match(line)
        if not m:
            continue
        indent, key = len(m["indent"]), m["key"].strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, key))
        if any(_pass_through(".".join(parents[: n + 1])) for n in range(len(parents))):
            continue
        j = i - 1  # up through the comment block right above the key, to its `# --`
        while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        if j < 0 or not lines[j].strip().startswith("# --"):
            missing.append(".".join([*parents, key]))
    return missing


def test_the_documentation_check_finds_an_undocumented_key() -> None:
    text = "# -- a\na:\n  # plain comment\n  b: 1\n  # -- c\n  # more\n  c: 2\nresources:\n  x: 1\n"
    assert undocumented(text) == ["a.b", "resources"]


def test_every_value_has_a_helm_docs_comment() -> None:
    missing = undocumented((CHART / "values.yaml").read_text())
    assert not missing, f"values without a `# --` comment: {missing}"


@pytest.mark.parametrize("files", [(), *((p,) for p in CI_VALUES)], ids=lambda f: f[0].stem if f else "defaults")
def test_shipped_values_satisfy_the_schema(files: tuple[Path, ...]) -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(merged_values(*files))


BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown top-level key", {"replicaCount": 2}, "additional properties 'replicaCount'"),
    ("misspelt nested key", {"watch": {"clusterwide": True}}, "'clusterwide'"),
    ("string for a boolean", {"watch": {"clusterWide": "yes"}}, "/watch/clusterWide"),
    ("number for a tag", {"image": {"tag": 1.2}}, "/image/tag"),
    ("unknown pull policy", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ("invalid namespace name", {"watch": {"namespaces": ["ML_Line"]}}, "/watch/namespaces/0"),
    ("port out of range", {"operator": {"aggregatorPort": 70000}}, "/operator/aggregatorPort"),
    ("zero status interval", {"operator": {"statusInterval": 0}}, "/operator/statusInterval"),
    ("unknown log format", {"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    ("not a quantity", {"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ("variant with a space", {"trainerImage": {"variant": "cpu gpu"}}, "/trainerImage/variant"),
    ("interval without unit", {"metrics": {"serviceMonitor": {"interval": "30"}}},
     "/metrics/serviceMonitor/interval"),
    ("unknown tier architecture",
     {"deviceTiers": {"tiers": [{"name": "gpu", "spec": {"architecture": "riscv64"}}]}},
     "/deviceTiers/tiers/0/spec/architecture"),
    ("misspelt tier field",
     {"deviceTiers": {"tiers": [{"name": "gpu", "spec": {"nodeSelectr": {}}}]}}, "'nodeSelectr'"),
    ("tier without spec", {"deviceTiers": {"tiers": [{"name": "big"}]}}, "/deviceTiers/tiers/0"),
    ("tier without name", {"deviceTiers": {"tiers": [{"spec": {}}]}}, "/deviceTiers/tiers/0"),
    ("tier name not a DNS name", {"deviceTiers": {"tiers": [{"name": "GPU_A100", "spec": {}}]}},
     "/deviceTiers/tiers/0/name"),
    ("tier with the old enabled key",
     {"deviceTiers": {"tiers": [{"name": "gpu", "enabled": False, "spec": {}}]}}, "'enabled'"),
    ("tiers neither list nor map", {"deviceTiers": {"tiers": "gpu"}}, "/deviceTiers/tiers"),
    # The free-form Kubernetes objects: their fields and types.
    ("misspelt container security field", {"securityContext": {"readOnlyRootFileSystem": True}},
     "'readOnlyRootFileSystem'"),
    ("string for runAsUser", {"podSecurityContext": {"runAsUser": "65532"}}, "/podSecurityContext/runAsUser"),
    ("negative runAsUser", {"securityContext": {"runAsUser": -1}}, "/securityContext/runAsUser"),
    ("unknown seccomp type", {"podSecurityContext": {"seccompProfile": {"type": "Default"}}},
     "/podSecurityContext/seccompProfile/type"),
    ("capability list as a string", {"securityContext": {"capabilities": {"drop": "ALL"}}},
     "/securityContext/capabilities/drop"),
    ("misspelt affinity kind", {"affinity": {"nodeAfinity": {}}}, "'nodeAfinity'"),
    ("node affinity without terms",
     {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}},
     "/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"),
    ("unknown toleration operator", {"tolerations": [{"key": "a", "operator": "In"}]}, "/tolerations/0/operator"),
    ("user roles flag as a string", {"userRoles": {"create": "yes"}}, "/userRoles/create"),
    ("env var without name", {"operator": {"extraEnv": [{"value": "1"}]}}, "/operator/extraEnv/0"),
]


@pytest.mark.parametrize(("values", "message"), [pytest.param(v, m, id=i) for i, v, m in BAD_VALUES])
def test_helm_rejects_bad_values(tools: Tools, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    proc = run([tools.helm, "template", "ft", CHART, *value_args([values], tmp_path)])
    assert proc.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_an_existing_service_account_must_be_named(tools: Tools, tmp_path: Path) -> None:
    proc = run([tools.helm, "template", "ft", CHART,
                *value_args([{"serviceAccount": {"create": False}}], tmp_path)])
    assert proc.returncode != 0
    assert "serviceAccount.name is required when serviceAccount.create is false" in proc.stderr
