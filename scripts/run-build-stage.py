#!/usr/bin/env python3
"""Run a Dockerfile's build stage on this machine, without a container engine.

The install steps of the images are tested by running them for real where no engine
runs: the first stage of the Dockerfile (the `build` stage, up to the next FROM), its ARG,
ENV, SHELL, WORKDIR, COPY and RUN instructions in order, with the RUN commands exactly as
written, in their SHELL, with the ARGs and ENVs in their environment. What differs from a
build, and so what this cannot check:

- the base image: the CPython 3.11 running this script (outside its virtual environment)
  is the `python` on PATH, like python:3.11-slim-bookworm's, and this machine's
  architecture is the platform (TARGETARCH);
- the stage's absolute directories (/opt/flextrain, /src) live under a temporary root
  instead (the commands are rewritten for that, nothing else is);
- the environment holds only PATH, HOME, the ARGs and ENVs, and this machine's TLS CA
  settings (as a build behind an intercepting proxy would pass them).

Usage:
  .venv/bin/python scripts/run-build-stage.py operator/Dockerfile
  .venv/bin/python scripts/run-build-stage.py trainer_image/Dockerfile --build-arg VARIANT=cuda
  --root DIR keeps the stage's files there (default: a temporary directory, removed).
Exit status: that of the first failing RUN (its output shown), 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The stage's absolute directories that move under the temporary root.
MOVED = ("/opt/flextrain", "/src")
#: The host's TLS settings a build behind an intercepting proxy passes as build args.
CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PIP_CERT")
ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def instructions(dockerfile: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the first stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    seen_from = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        command, _, args = line.partition(" ")
        command = command.upper()
        if command == "FROM":
            if seen_from:
                return
            seen_from = True
            continue
        if seen_from:
            yield command, args.strip()


def expand(value: str, env: dict[str, str]) -> str:
    """Dockerfile variable substitution: $NAME, ${NAME}, ${NAME:-default}."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if m.group(3) is not None:
            return env.get(name) or expand(m.group(3), env)
        return env.get(name, "")

    return re.sub(r"\$(?:(\w+)|\{(\w+)(?::-([^}]*))?\})", one, value)


def move(text: str, root: Path) -> str:
    """Put the stage's absolute directories under `root`."""
    for path in MOVED:
        text = re.sub(rf"(?<![\w./-]){re.escape(path)}(?=[/\s\"'\[:]|$)", str(root) + path, text)
    return text


def run_stage(dockerfile: Path, build_args: dict[str, str], root: Path) -> int:
    # The interpreter running this script, outside any virtual environment.
    python = os.path.realpath(sys.executable)
    if sys.version_info[:2] != (3, 11):
        print(f"run-build-stage: needs CPython 3.11 like the base image, not {sys.version}", file=sys.stderr)
        return 2
    bindir = root / "host-bin"
    bindir.mkdir(parents=True, exist_ok=True)
    (bindir / "python").symlink_to(python)
    home = root / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": f"{bindir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home)}
    env.update({k: os.environ[k] for k in CA_VARIABLES if k in os.environ})
    # buildx's automatic platform argument, for the machine this runs on.
    automatic = {"TARGETARCH": ARCH.get(platform.machine(), platform.machine())}
    shell = ["/bin/sh", "-c"]
    workdir = root
    for command, args in instructions(dockerfile):
        if command == "ARG":
            name, eq, default = args.partition("=")
            if name in build_args:
                env[name] = build_args[name]
            elif name in automatic:
                env[name] = automatic[name]
            elif eq:
                env[name] = expand(default.strip().strip('"'), env)
        elif command == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = move(expand(value, env), root)
        elif command == "SHELL":
            shell = json.loads(args)
        elif command == "WORKDIR":
            workdir = Path(move(expand(args, env), root))
            workdir.mkdir(parents=True, exist_ok=True)
        elif command == "COPY":
            *sources, dest = shlex.split(args)
            target = Path(move(dest, root))
            for source in sources:
                src = REPO / source
                if src.is_dir():
                    shutil.copytree(src, target, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    place = target / src.name if dest.endswith("/") else target
                    place.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, place)
        elif command == "RUN":
            script = move(args, root)
            print(f"==> RUN {args[:160]}{'...' if len(args) > 160 else ''}", flush=True)
            done = subprocess.run([*shell, script], env=env, cwd=workdir, check=False)
            if done.returncode != 0:
                print(f"run-build-stage: RUN exited {done.returncode}", file=sys.stderr)
                return done.returncode
        elif command not in ("LABEL", "EXPOSE", "USER", "ENTRYPOINT", "CMD"):
            print(f"run-build-stage: {command} is not supported here", file=sys.stderr)
            return 2
    print(f"run-build-stage: every step of the build stage of {dockerfile} passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dockerfile", type=Path)
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--root", type=Path, help="keep the stage's files here")
    opts = parser.parse_args(argv)
    dockerfile = opts.dockerfile if opts.dockerfile.is_absolute() else REPO / opts.dockerfile
    build_args = dict(a.split("=", 1) for a in opts.build_arg)
    if opts.root:
        opts.root.mkdir(parents=True, exist_ok=True)
        return run_stage(dockerfile, build_args, opts.root.resolve())
    with tempfile.TemporaryDirectory(prefix="flextrain-build-stage-") as tmp:
        return run_stage(dockerfile, build_args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
