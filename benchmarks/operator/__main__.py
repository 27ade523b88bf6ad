"""python -m benchmarks.operator [--jobs 1,50] [--settle 10] [--repeat 3]
[--out benchmarks/out/operator.json]"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from benchmarks.operator.bench import print_table, run_all


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.operator", description=__doc__)
    p.add_argument("--jobs", default="1,50", help="comma-separated numbers of concurrent jobs")
    p.add_argument(
        "--settle",
        type=float,
        default=10.0,
        help="seconds of steady state measured after the children exist",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario (median shown)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/operator.json"))
    args = p.parse_args()
    counts = [int(n) for n in args.jobs.split(",") if n.strip()]
    results = asyncio.run(run_all(counts, settle=args.settle, repeat=args.repeat))
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
