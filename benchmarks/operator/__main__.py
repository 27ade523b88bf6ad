"""python -m benchmarks.operator [--backend real|emulator] [--jobs 50] [--settle S]
[--repeat 1] [--keep DIR] [--out benchmarks/out/operator.json]

`real` (default): a real control plane (tests/cluster/controlplane), the chart installed
with helm, the operator with the chart's ServiceAccount; `emulator`: the test suite's
Kubernetes emulator in this process (quicker, for comparisons)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.operator.bench import print_table, run_all


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.operator", description=__doc__)
    p.add_argument("--backend", choices=("real", "emulator"), default="real")
    p.add_argument("--jobs", default="50", help="comma-separated numbers of concurrent jobs")
    p.add_argument(
        "--settle",
        type=float,
        default=None,
        help="seconds of steady state measured after the jobs settled (real: 60, emulator: 10)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario (median shown)")
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="real backend: keep the logs (audit, operator, ...) here",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/out/operator[-emulator].json"
    )
    args = p.parse_args()
    counts = [int(n) for n in args.jobs.split(",") if n.strip()]
    settle = args.settle if args.settle is not None else (60.0 if args.backend == "real" else 10.0)
    out = args.out or Path(
        "benchmarks/out/operator.json"
        if args.backend == "real"
        else "benchmarks/out/operator-emulator.json"
    )
    results = run_all(
        counts, settle=settle, repeat=args.repeat, backend=args.backend, keep=args.keep
    )
    print_table(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
