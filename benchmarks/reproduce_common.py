"""Shared plumbing of the paper-reproduction benchmarks (``benchmarks.reproduce_*``).

Nothing here trains or merges: the benchmarks call ``flextrain.core`` and
``flextrain.data`` for that. This module only times, formats and writes results.

Importing it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it,
so import it before torch. torch's OpenMP (libgomp, read when torch loads) otherwise
lets idle threads spin at every barrier; on a shared 2-core machine that turned one
ResNet-20 training step (batch 64, 2 threads) from 0.3-0.45 s into 14 s at a load
average of about 20 (measured interleaved; 1 thread: 0.7-2 s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: Where the installed Debian package puts the Fashion-MNIST files.
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: Root of the benchmark outputs (gitignored).
OUT_ROOT = Path(__file__).resolve().parent / "out"

T = TypeVar("T")


class TimedLoader(Generic[T]):
    """Wrap an iterable (an evaluation loader) and time each complete pass over it.

    ``flextrain.core.centralised.evaluate`` consumes a loader in one tight loop, so the
    time from the first ``next`` to exhaustion is the evaluation time. The training
    loops report ``wall_s`` with evaluation included; subtracting :meth:`take` gives
    the training time alone.
    """

    def __init__(self, inner: Iterable[T]) -> None:
        self.inner = inner
        self._pending = 0.0
        #: Seconds of all complete passes so far.
        self.total_s = 0.0

    def __iter__(self) -> Iterator[T]:
        start = time.perf_counter()
        yield from self.inner
        elapsed = time.perf_counter() - start
        self._pending += elapsed
        self.total_s += elapsed

    def take(self) -> float:
        """Seconds of the passes completed since the last call (and reset that count)."""
        pending, self._pending = self._pending, 0.0
        return pending


def data_dir_for(dataset: str, data_dir: str | None) -> str | None:
    """``data_dir`` or, for Fashion-MNIST, the Debian package's directory."""
    if data_dir is not None:
        return data_dir
    if dataset == "fashion-mnist":
        return DEFAULT_FASHION_MNIST_DIR
    return None


def add_scale_arguments(
    p: argparse.ArgumentParser, name: str, *, limit: int, curve_limit: int, curve_unit: str
) -> None:
    """The flags both benchmarks share: --quick, dataset and scale, threads, output.
    ``limit`` and ``curve_limit`` are the full-run defaults, for the help text; the
    values themselves are filled in by :func:`fill_defaults`."""
    p.add_argument("--quick", action="store_true", help="smoke run (a few minutes)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-dir", default=None, help="dataset directory")
    p.add_argument("--limit", type=int, default=None, help=f"training examples (default {limit})")
    p.add_argument(
        "--curve-limit",
        type=int,
        default=None,
        help=f"test examples for the per-{curve_unit} curves (default {curve_limit})",
    )
    p.add_argument("--layers", type=int, default=20, help="ResNet depth (default 20)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help=f"output directory (default benchmarks/out/{name})")


def fill_defaults(args: argparse.Namespace, defaults: dict[str, tuple[int, int]]) -> None:
    """Set every flag left unset to its (quick, full) default."""
    for flag, (quick, full) in defaults.items():
        if getattr(args, flag) is None:
            setattr(args, flag, quick if args.quick else full)


@dataclass
class Setup:
    """What both benchmarks start from: the clock, the machine, the output directory,
    the dataset and the ResNet spec for it."""

    start: float
    machine: dict[str, Any]
    out: Path
    splits: Any  # flextrain.data.Splits
    spec: Any  # flextrain.core.models.ModelSpec


def begin(args: argparse.Namespace, name: str) -> Setup:
    """Apply --threads, then load the data and size the model from the shared flags."""
    # Imported here: this module must stay importable before torch (see above).
    import torch

    from flextrain.core.models import ModelSpec
    from flextrain.data import load_dataset

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    info = machine()
    out = out_dir(name, args.out)
    splits = load_dataset(
        args.dataset, data_dir_for(args.dataset, args.data_dir), seed=0, limit=args.limit
    )
    spec = ModelSpec("resnet", args.layers, splits.num_classes, splits.channels, splits.image_size)
    return Setup(start, info, out, splits, spec)


def csv_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def out_dir(name: str, given: str | None) -> Path:
    """The output directory (created): ``given`` or ``benchmarks/out/<name>``."""
    path = Path(given) if given is not None else OUT_ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict[str, Any]:
    """What ran the benchmark, with the load average as evidence of other work."""
    import torch  # after OMP_WAIT_POLICY is set (see the module docstring)

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_1_5_15": list(os.getloadavg()),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for fewer than two values)."""
    if not values:
        return math.nan, None
    if len(values) == 1:
        return float(values[0]), None
    return statistics.fmean(values), statistics.stdev(values)


def pct(value: float | None, digits: int = 1) -> str:
    """``0.8734`` -> ``"87.3"``; None or NaN -> ``"-"``."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{100 * value:.{digits}f}"


def pct_pm(values: Sequence[float], digits: int = 1) -> str:
    """Mean ± sample std of accuracies (0..1) in percent; just the mean for one value."""
    if not values:
        return "-"
    mean, std = mean_std(values)
    if std is None:
        return pct(mean, digits)
    return f"{pct(mean, digits)} ± {pct(std, digits)}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_outputs(
    directory: Path, name: str, markdown: str, data: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.json`` into ``directory``; return both paths."""
    md_path = directory / f"{name}.md"
    json_path = directory / f"{name}.json"
    md_path.write_text(markdown + "\n", encoding="utf-8")
    json_path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return md_path, json_path


def parse_seeds(text: str) -> list[int]:
    """``--seeds``: ``"3"`` -> seeds 0, 1, 2; ``"0,1,2"`` or ``"5,"`` -> exactly those.

    Raises ValueError (argparse shows it) for anything else: negative or repeated
    seeds, a count below 1, or non-integers.
    """
    items = [item.strip() for item in text.split(",")]
    try:
        if len(items) == 1:
            count = int(items[0])
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(item) for item in items if item]
    except ValueError:
        raise ValueError(
            f"--seeds takes a count >= 1 (3 = seeds 0,1,2) or a comma-separated list "
            f"of seeds >= 0 (0,1,2; one seed: 5,), got {text!r}"
        ) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists distinct seeds >= 0, got {text!r}")
    return seeds


def provenance(argv: Sequence[str] | None, module: str) -> dict[str, Any]:
    """What produced a result: the git commit (and whether tracked files differed from
    it), the command line and the UTC start time."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if status is None else bool(status),
        "command": shlex.join(["python", "-m", module, *args]),
        "started_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def log(message: str) -> None:
    """One progress line, flushed at once (runs take minutes)."""
    print(message, flush=True)
