"""The two images, checked without a Docker engine (none runs on these machines): what
the Dockerfiles copy exists and reaches the build context, the base images are pinned,
the final user is the non-root UID the chart and the operator's pods assume, the entry
points are `flextrain` subcommands that start, and the operator image's package list is
enough for `flextrain operator`. Building and running the images is not tested here."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from flextrain.cli import build_parser
from tests.chart.chart import CHART, REPO, TIMEOUT

pytestmark = pytest.mark.timeout(60)

DOCKERFILES = {
    "operator": REPO / "operator" / "Dockerfile",
    "trainer": REPO / "trainer_image" / "Dockerfile",
}
FLEXTRAIN = Path(sys.executable).with_name("flextrain")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NON_ROOT_UID = 65532


@dataclass(frozen=True)
class Instruction:
    command: str
    args: str
    stage: int


def parse(path: Path) -> tuple[dict[str, str], list[Instruction]]:
    """(global ARG defaults, instructions with their stage index) of a Dockerfile."""
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args: dict[str, str] = {}
    instructions: list[Instruction] = []
    stage = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        command, _, args = line.partition(" ")
        command = command.upper()
        if command == "FROM":
            stage += 1
        if command == "ARG" and stage == -1:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        instructions.append(Instruction(command, args.strip(), stage))
    return global_args, instructions


def final(instructions: list[Instruction], command: str) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.command == command]


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out, by .dockerignore
    (patterns without `!`; a pattern matching a parent directory excludes its content)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in dockerignore():
        pattern = pattern.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], pattern[3:])
            ):
                return True
    return False


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_copied_file_exists_in_the_build_context(image: str) -> None:
    _, instructions = parse(DOCKERFILES[image])
    copies = [i for i in instructions if i.command == "COPY" and "--from=" not in i.args]
    assert copies
    for copy in copies:
        *sources, _dest = copy.args.split()
        for source in sources:
            assert (REPO / source).exists(), f"{image}: COPY {source}: no such file"
            assert not ignored(source), f"{image}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_base_images_are_pinned_tags(image: str) -> None:
    global_args, instructions = parse(DOCKERFILES[image])
    for instruction in instructions:
        if instruction.command != "FROM":
            continue
        ref = instruction.args.split()[0]
        ref = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], ref)
        name, _, tag = ref.partition(":")
        assert tag and tag != "latest", f"{image}: FROM {ref} is not pinned"
        assert re.match(r"^\d+\.\d+\.\d+-", tag), f"{image}: {ref}: pin the patch release"
        # the interpreter the project supports (pyproject requires-python)
        assert name == "python" and tag.startswith("3.11."), ref


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_stage_runs_as_the_non_root_uid_the_chart_expects(image: str) -> None:
    _, instructions = parse(DOCKERFILES[image])
    [user] = final(instructions, "USER")
    assert user.args == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
    assert instructions[-1].stage == user.stage
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == NON_ROOT_UID


@pytest.mark.parametrize(("image", "subcommand"), [("operator", "operator"), ("trainer", "trainer")])
def test_entrypoint_is_flextrain_and_the_default_command_parses(image: str, subcommand: str) -> None:
    _, instructions = parse(DOCKERFILES[image])
    [entrypoint] = final(instructions, "ENTRYPOINT")
    [cmd] = final(instructions, "CMD")
    assert json.loads(entrypoint.args) == ["flextrain"]
    args = build_parser().parse_args(json.loads(cmd.args))
    assert args.command == subcommand


def _subcommands_the_operator_runs() -> list[str]:
    """The `command` of every container the operator builds (flextrain/operator/builders.py)."""
    text = (REPO / "flextrain" / "operator" / "builders.py").read_text()
    return sorted(set(re.findall(r'"command":\s*\["flextrain",\s*"(\w+)"\]', text)))


def test_the_operator_starts_pods_with_flextrain_subcommands() -> None:
    assert _subcommands_the_operator_runs() == ["aggregator", "trainer"]


@pytest.mark.parametrize("subcommand", ["operator", "trainer", "aggregator"])
def test_entry_points_start(subcommand: str) -> None:
    proc = subprocess.run([str(FLEXTRAIN), subcommand, "--help"], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"flextrain {subcommand}" in proc.stdout


def test_torch_build_arguments_match_the_pyproject_pins() -> None:
    _, instructions = parse(DOCKERFILES["trainer"])
    args = dict(i.args.split("=", 1) for i in instructions if i.command == "ARG" and "=" in i.args)
    trainer = PYPROJECT["project"]["optional-dependencies"]["trainer"]
    pins = {Requirement(r).name: str(Requirement(r).specifier) for r in trainer}
    assert pins["torch"] == f"=={args['TORCH_VERSION']}"
    assert args["VARIANT"] == "cpu"


def operator_requirements() -> list[Requirement]:
    """What the operator image installs: the dependencies and the `operator` extra."""
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["operator"]]


def test_the_operator_image_installs_no_torch() -> None:
    names = {canonicalize_name(r.name) for r in operator_requirements()}
    assert not names & {"torch", "torchvision", "numpy", "scikit-learn", "matplotlib", "safetensors"}
    assert "operator" in DOCKERFILES["operator"].read_text().split('["optional-dependencies"]')[1][:20]


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions the requirements install (their dependencies too, no extras)."""
    seen: set[str] = set()
    todo = [r.name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for raw in metadata.distribution(name).requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


_ONLY_THESE = """
import importlib, importlib.abc, importlib.machinery, json, pkgutil, sys
allowed = set(json.loads(sys.argv[1]))
site = [p for p in sys.path if p.endswith("site-packages")]
sys.path[:] = [p for p in sys.path if p not in site]
class OperatorImage(importlib.abc.MetaPathFinder):
    \"\"\"Finds top-level modules in site-packages only when the operator image has them.\"\"\"
    def find_spec(self, name, path=None, target=None):
        if path is None and name in allowed:
            return importlib.machinery.PathFinder.find_spec(name, site)
        return None
sys.meta_path.append(OperatorImage())
try:
    import torch
except ModuleNotFoundError:
    pass
else:
    sys.exit("torch is importable: the check hides nothing")
import flextrain.operator
for module in pkgutil.iter_modules(flextrain.operator.__path__, "flextrain.operator."):
    importlib.import_module(module.name)
from flextrain.cli import main
try:
    main(["operator", "--help"])
except SystemExit as exc:
    sys.exit(exc.code)
"""


def test_operator_image_packages_are_enough_to_run_flextrain_operator() -> None:
    """Every flextrain.operator module and `flextrain operator --help` import, with only the
    standard library, flextrain and what the operator image installs importable."""
    installed = _closure(operator_requirements())
    modules = {
        module for module, dists in metadata.packages_distributions().items()
        if any(canonicalize_name(d) in installed for d in dists)
    }
    assert "torch" not in modules
    proc = subprocess.run([sys.executable, "-c", _ONLY_THESE, json.dumps(sorted(modules | {"flextrain"}))],
                          capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flextrain operator" in proc.stdout


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (".venv", ".venv-flower", ".tools/bin/helm", "runs/quickstart", "data/cifar",
                 "benchmarks/out/report.md", ".git/HEAD", "flextrain/__pycache__/cli.cpython-311.pyc"):
        assert ignored(path), path
    for path in ("pyproject.toml", "README.md", "flextrain/cli.py"):
        assert not ignored(path), path


def test_build_commands_are_documented() -> None:
    guide = (REPO / "docs" / "install.md").read_text()
    assert "docker buildx build -f trainer_image/Dockerfile --platform linux/amd64,linux/arm64" in guide
    assert "--build-arg VARIANT=cuda" in guide
    assert "docker buildx build -f operator/Dockerfile --platform linux/amd64,linux/arm64" in guide
