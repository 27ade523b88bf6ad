"""`flextrain run`: arguments and exit codes (0 done, 1 failed, 130 interrupted)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, help="the FlexTrainJob and its DeviceTiers (YAML, multi-document allowed)")
    p.add_argument("--out", type=Path, help="results directory (default: runs/<job-name>)")
    p.add_argument("--resume", action="store_true", help="continue a stopped run from its checkpoint")
    p.add_argument("--fresh", action="store_true", help="discard an earlier run's checkpoints and start over")
    p.add_argument("--port", type=int, default=0, help="aggregator port (default: any free port)")
    p.add_argument("--max-parallel", type=int, default=0, help="trainers training at once (default: CPU cores)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cores / max-parallel)")
    p.add_argument("--trainer-restarts", type=int, default=6, help="restarts of a crashed trainer (default 6, like a Job)")


def run(args: argparse.Namespace) -> int:
    from flextrain.local.runner import LocalRun, RunError, RunOptions
    from flextrain.logs import setup_logging

    setup_logging("text", "WARNING")
    if args.resume and args.fresh:
        print("flextrain run: --resume and --fresh exclude each other", file=sys.stderr)
        return 2
    options = RunOptions(
        files=args.files, out=args.out, resume=args.resume, fresh=args.fresh, port=args.port,
        max_parallel=args.max_parallel, threads=args.threads, trainer_restarts=args.trainer_restarts,
        command=["flextrain", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("flextrain") else None,
    )
    try:
        return LocalRun(options).run()
    except RunError as exc:
        print(f"flextrain run: {exc}", file=sys.stderr)
        return 1
