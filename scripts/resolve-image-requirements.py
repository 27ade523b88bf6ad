#!/usr/bin/env python3
"""Resolve the exact Python requirement set of every image and platform, without an engine.

For each target of docker-bake.json and each of its platforms, this runs the pip installs
of its Dockerfile as `pip install --dry-run --report` for that platform (manylinux wheels
up to the base image's glibc, CPython 3.11, binary wheels only), prints the resolved
distributions and checks that no CUDA package (nvidia-*, cuda-*, triton, a +cu torch) is
in a CPU variant (the operator image and trainer-cpu). Exit status 1 when a check fails
or a resolution fails, 0 otherwise.

How each image installs (and so how it is resolved here):
  operator      pyproject's dependencies + the `operator` extra, from PIP_INDEX_URL.
  trainer-*     1) torch alone (--no-deps) from the torch index of the variant;
                2) the dependencies + the `trainer` extra from PIP_INDEX_URL, torch being
                   satisfied by 1), so torch's own requirements come from the metadata of
                   the wheel picked in 1).
When the torch index of a variant cannot be reached (the PyTorch CPU index from a machine
that reaches only PyPI), step 1 is reported as not resolved and step 2 uses the
requirements of PyPI's torch wheel of the same version and platform minus its CUDA ones,
saying so: the CPU wheel itself, its size and its own requirement list are then unchecked.

Usage (the repository's .venv; network access to the indexes):
  .venv/bin/python scripts/resolve-image-requirements.py [--sizes] [--json FILE] [TARGET ...]
  --index-url, --torch-cpu-index-url, --torch-cuda-index-url: as the build arguments
  --sizes: also download the resolved wheels (pip download, into --cache) and report their
           compressed size and the size they unpack to.
  --strict: an unreachable torch index fails the run (check a complete mirror with it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
BAKE = REPO / "docker-bake.json"
PYTHON_VERSION = "3.11"
#: glibc of the base image (Debian 12 bookworm): manylinux wheels up to this run on it.
GLIBC_MINOR = 36
ARCH = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}
#: A distribution that is part of a CUDA stack.
CUDA_NAME = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def is_cuda(name: str, version: str) -> bool:
    return bool(CUDA_NAME.match(canonicalize_name(name))) or bool(re.search(r"\+cu\d", version))


def platform_tags(arch: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    tags.append(f"manylinux2014_{arch}")
    if arch == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def target_environment(arch: str) -> dict[str, str]:
    """Marker values of the image's interpreter (CPython 3.11 on Linux, `arch`)."""
    env = default_environment()
    env.update(platform_machine=arch, platform_system="Linux", sys_platform="linux",
               os_name="posix", implementation_name="cpython",
               platform_python_implementation="CPython", python_version=PYTHON_VERSION)
    env["python_full_version"] = PYTHON_VERSION + ".11"
    return dict(env)


@dataclass
class Dist:
    name: str
    version: str
    url: str
    sha256: str
    requires: list[str]
    size: int | None = None
    unpacked: int | None = None
    #: For a torch CPU wheel that could not be resolved: PyPI's wheel of the same version
    #: and platform, whose non-CUDA files estimate its size (`estimated` once measured).
    estimate_from: str = ""
    estimated: bool = False

    @property
    def cuda(self) -> bool:
        return is_cuda(self.name, self.version)


@dataclass
class Resolution:
    target: str
    platform: str
    variant: str
    dists: list[Dist] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    torch_index: str = ""
    torch_resolved: bool = True
    #: What pip's isolated build of FlexTrain installs during the build, not in the image.
    build_dists: list[Dist] = field(default_factory=list)

    @property
    def cpu_only(self) -> bool:
        return self.variant != "cuda"


def pip_environment() -> dict[str, str]:
    """This environment without pip settings that would change where packages come from
    (the machine's find-links or index); its TLS settings stay."""
    source = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX", "PIP_CONSTRAINT",
              "PIP_REQUIRE_VIRTUALENV", "PIP_ONLY_BINARY", "PIP_NO_BINARY", "PIP_PRE")
    return {k: v for k, v in os.environ.items() if k not in source}


def pip_dry_run(requirements: list[str], arch: str, index: str, *, no_deps: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--report", str(report), "--only-binary=:all:", "--python-version", PYTHON_VERSION,
               "--implementation", "cp", "--target", str(Path(tmp) / "target"), "--index-url", index,
               "--no-input", "--disable-pip-version-check"]
        for tag in platform_tags(arch):
            cmd += ["--platform", tag]
        if no_deps:
            cmd.append("--no-deps")
        done = subprocess.run([*cmd, *requirements], capture_output=True, text=True, timeout=900, check=False,
                              env=pip_environment())
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            errors = [ln for ln in lines if ln.startswith("ERROR:")] or lines or [f"pip exited {done.returncode}"]
            broken = [ln for ln in lines if "connection broken by" in ln]
            if broken:
                host = re.search(r"host='([^']+)'", broken[-1])
                cause = re.search(r"\[Errno [^\]]+\][^'\")]*", broken[-1])
                raise RuntimeError(f"index unreachable: {host.group(1) if host else ''}: "
                                   f"{cause.group(0).strip() if cause else broken[-1]}")
            raise RuntimeError(errors[-1])
        return dict(json.loads(report.read_text()))


def dists_of(report: dict[str, Any]) -> list[Dist]:
    out = []
    for item in report["install"]:
        meta = item["metadata"]
        info = item["download_info"]
        out.append(Dist(meta["name"], meta["version"], info["url"],
                        info.get("archive_info", {}).get("hashes", {}).get("sha256", ""),
                        list(meta.get("requires_dist") or [])))
    return out


def requirements_for(req_strings: list[str], env: dict[str, str]) -> list[str]:
    """The requirements whose markers hold in `env` (no extras), without their markers."""
    out = []
    for raw in req_strings:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            req.marker = None
            out.append(str(req))
    return out


def load_matrix() -> dict[str, dict[str, Any]]:
    bake = json.loads(BAKE.read_text())
    variables = {k: v.get("default", "") for k, v in bake.get("variable", {}).items()}
    targets = {}
    for name in bake["group"]["default"]["targets"]:
        target = bake["target"][name]
        args = {k: re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], v)
                for k, v in target.get("args", {}).items()}
        targets[name] = {**target, "args": args}
    return targets


def resolve(name: str, target: dict[str, Any], platform: str, opts: argparse.Namespace) -> Resolution:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    arch = ARCH[platform]
    env = target_environment(arch)
    base = list(project["dependencies"])
    args = target["args"]
    variant = args.get("VARIANT", "cpu") if "trainer" in name else "operator"
    res = Resolution(name, platform, variant)
    index = opts.index_url or args.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    if variant == "operator":
        wanted = requirements_for(base + project["optional-dependencies"]["operator"], env)
    else:
        trainer = project["optional-dependencies"]["trainer"]
        [torch_pin] = [r for r in trainer if Requirement(r).name == "torch"]
        if variant == "cpu":
            res.torch_index = opts.torch_cpu_index_url or args.get("TORCH_CPU_INDEX_URL") or ""
        else:
            res.torch_index = opts.torch_cuda_index_url or args.get("TORCH_CUDA_INDEX_URL") or index
        try:
            [torch] = dists_of(pip_dry_run([torch_pin], arch, res.torch_index, no_deps=True))
        except RuntimeError as exc:
            if variant == "cuda" or opts.strict:
                res.errors.append(f"torch from {res.torch_index}: {exc}")
                return res
            res.torch_resolved = False
            res.notes.append(f"torch from {res.torch_index}: NOT RESOLVED here ({exc}); the CPU wheel, "
                             "its size and its own requirement list are unchecked")
            [torch] = dists_of(pip_dry_run([torch_pin], arch, index, no_deps=True))
            dropped = sorted({Requirement(r).name for r in torch.requires if is_cuda(Requirement(r).name, "")})
            res.notes.append(f"its requirements are those of {torch.url.rsplit('/', 1)[-1]} (PyPI) minus "
                             f"the CUDA ones: {', '.join(dropped)}")
            torch.requires = [r for r in torch.requires if not is_cuda(Requirement(r).name, "")]
            torch.version += " (CPU build: not resolved here)"
            torch.estimate_from, torch.url, torch.sha256 = torch.url, "", ""
        rest = [r for r in trainer if Requirement(r).name != "torch"]
        wanted = requirements_for(base + rest + torch.requires, env)
    try:
        res.dists = dists_of(pip_dry_run(wanted, arch, index, no_deps=False))
        # Building FlexTrain itself (pip's isolated build environment) needs these too.
        build = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
        res.build_dists = dists_of(pip_dry_run(list(build), arch, index, no_deps=False))
    except RuntimeError as exc:
        res.errors.append(f"from {index}: {exc}")
        return res
    if variant != "operator":
        res.dists.append(torch)
    res.dists.sort(key=lambda d: canonicalize_name(d.name))
    # pip evaluates the markers of transitive requirements on this machine, not the target:
    # exact only while no resolved requirement depends on the machine's architecture.
    machine = sorted({d.name for d in res.dists for r in d.requires if "platform_machine" in r})
    host = default_environment()["platform_machine"]
    if machine and arch != host:
        res.notes.append(f"pip evaluated the platform_machine markers of {', '.join(machine)} for this "
                         f"machine ({host}), not {arch}: check those by hand")
    if res.cpu_only:
        cuda = [f"{d.name}=={d.version}" for d in res.dists if d.cuda]
        if cuda:
            res.errors.append("CUDA packages in a CPU image: " + ", ".join(cuda))
    return res


def measure(res: Resolution, cache: Path) -> None:
    """Download the resolved wheels with pip (PyPI's files, checked against the report's
    sha256) and record their size and the size of their contents."""
    arch = ARCH[res.platform]
    cache.mkdir(parents=True, exist_ok=True)
    todo = [d for d in res.dists if d.url and not (cache / d.url.rsplit("/", 1)[-1]).exists()]
    if todo:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(cache),
               "--disable-pip-version-check"]
        for tag in platform_tags(arch):
            cmd += ["--platform", tag]
        for d in todo:
            cmd += [f"{d.name}=={d.version}"]
            index = res.torch_index if canonicalize_name(d.name) == "torch" else None
            if index:
                cmd += ["--extra-index-url", index]
        subprocess.run(cmd, check=True, timeout=3600, env=pip_environment())
    for d in res.dists:
        if d.estimate_from:
            estimate_cpu_torch(d, arch, cache)
        if not d.url:
            continue
        path = cache / d.url.rsplit("/", 1)[-1]
        d.size = path.stat().st_size
        with zipfile.ZipFile(path) as wheel:
            d.unpacked = sum(i.file_size for i in wheel.infolist())


#: Files of PyPI's (CUDA) torch wheel that a CPU-only build does not have.
CUDA_ONLY_FILES = re.compile(r"^torch/lib/lib(torch_cuda.*|c10_cuda|caffe2_nvrtc|torch_nvshmem)\.so")


def estimate_cpu_torch(d: Dist, arch: str, cache: Path) -> None:
    """Estimate the CPU torch wheel (unreachable here) as PyPI's wheel of the same version
    and platform without its CUDA-only libraries: compressed and unpacked sizes of the rest."""
    path = cache / d.estimate_from.rsplit("/", 1)[-1]
    if not path.exists():
        version = d.version.split(" ")[0]
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(cache),
               "--disable-pip-version-check", f"torch=={version}"]
        for tag in platform_tags(arch):
            cmd += ["--platform", tag]
        subprocess.run(cmd, check=True, timeout=3600, env=pip_environment())
    with zipfile.ZipFile(path) as wheel:
        kept = [i for i in wheel.infolist() if not CUDA_ONLY_FILES.match(i.filename)]
    d.size = sum(i.compress_size for i in kept)
    d.unpacked = sum(i.file_size for i in kept)
    d.estimated = True


def mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.1f}"


def print_resolution(res: Resolution) -> None:
    print(f"\n== {res.target} {res.platform} ({'CPU only' if res.cpu_only else 'CUDA'})")
    if res.torch_index:
        print(f"   torch index: {res.torch_index}")
    for note in res.notes:
        print(f"   note: {note}")
    sized = any(d.size is not None for d in res.dists)
    for d in res.dists:
        mark = ("  CUDA" if d.cuda else "") + ("  (size estimated: PyPI's wheel without its CUDA "
                                               "libraries)" if d.estimated else "")
        sizes = f"  {mib(d.size):>9} MiB  {mib(d.unpacked):>9} MiB unpacked" if sized else ""
        print(f"   {d.name}=={d.version}{sizes}{mark}")
    if sized:
        known = [d for d in res.dists if d.size is not None]
        total = sum(d.size or 0 for d in known), sum(d.unpacked or 0 for d in known)
        cuda = [d for d in known if d.cuda]
        print(f"   total of {len(known)} wheels: {mib(total[0])} MiB, {mib(total[1])} MiB unpacked"
              + (f" (the CUDA packages: {mib(sum(d.size or 0 for d in cuda))} MiB, "
                 f"{mib(sum(d.unpacked or 0 for d in cuda))} MiB unpacked)" if cuda else "")
              + ("" if len(known) == len(res.dists) else f"; {len(res.dists) - len(known)} not measured"))
    if res.build_dists:
        print("   build only (FlexTrain's build backend, not in the image): "
              + ", ".join(f"{d.name}=={d.version}" for d in res.build_dists))
    for error in res.errors:
        print(f"   FAIL: {error}")
    if not res.errors:
        print(f"   OK: {len(res.dists)} distributions" + (", no CUDA package" if res.cpu_only else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="bake targets (default: the default group)")
    parser.add_argument("--index-url", default="", help="PIP_INDEX_URL (default: the bake file's)")
    parser.add_argument("--torch-cpu-index-url", default="", help="TORCH_CPU_INDEX_URL")
    parser.add_argument("--torch-cuda-index-url", default="", help="TORCH_CUDA_INDEX_URL")
    parser.add_argument("--sizes", action="store_true", help="download the wheels and report sizes")
    parser.add_argument("--strict", action="store_true",
                        help="fail when a torch index is unreachable instead of reporting it (for a mirror's CI)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "flextrain-image-wheels")
    parser.add_argument("--json", type=Path, help="write every resolution here as JSON")
    opts = parser.parse_args(argv)
    matrix = load_matrix()
    unknown = sorted(set(opts.targets) - set(matrix))
    if unknown:
        parser.error(f"unknown targets {unknown}; the bake file has {sorted(matrix)}")
    results = []
    for name, target in matrix.items():
        if opts.targets and name not in opts.targets:
            continue
        for platform in target["platforms"]:
            res = resolve(name, target, platform, opts)
            if opts.sizes and res.dists:
                measure(res, opts.cache)
            print_resolution(res)
            results.append(res)
    if opts.json:
        opts.json.write_text(json.dumps([
            {"target": r.target, "platform": r.platform, "variant": r.variant, "torchIndex": r.torch_index,
             "torchResolved": r.torch_resolved, "notes": r.notes, "errors": r.errors,
             "buildOnly": [{"name": d.name, "version": d.version} for d in r.build_dists],
             "distributions": [{"name": d.name, "version": d.version, "url": d.url, "sha256": d.sha256,
                                "cuda": d.cuda, "size": d.size, "unpacked": d.unpacked} for d in r.dists]}
            for r in results], indent=2) + "\n")
    failed = [f"{r.target} {r.platform}" for r in results if r.errors]
    print(f"\n{len(results) - len(failed)} of {len(results)} image platforms resolved and checked"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
