"""`flextrain trainer` / `python -m flextrain.trainer`: one device's trainer process.

Exit codes: 0 when the aggregator reports training complete; 2 (EXIT_PERMANENT of
flextrain.contract.env) with a one-line reason on a permanent error (bad environment,
rejected token, unknown job or tier).
"""

from __future__ import annotations

import argparse
import sys

from flextrain.allocator import retain_freed_memory
from flextrain.contract.env import EXIT_PERMANENT, LOG_FORMATS
from flextrain.logs import setup_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="train one batch per round")
    p.add_argument(
        "--log-format", choices=LOG_FORMATS, help="default: $FLEXTRAIN_LOG_FORMAT, else json"
    )


def run(args: argparse.Namespace) -> int:
    from flextrain.trainer.client import Fatal
    from flextrain.trainer.config import ConfigError, TrainerConfig

    try:
        config = TrainerConfig.from_env()
    except ConfigError as exc:
        print(f"flextrain trainer: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    setup_logging(args.log_format or config.log_format)
    retain_freed_memory()
    try:
        import torch

        if config.threads:
            torch.set_num_threads(config.threads)
        from flextrain.trainer.loop import Trainer

        Trainer(config, max_steps_per_epoch=1 if args.dry_run else None).run()
    except (ConfigError, Fatal) as exc:
        print(f"flextrain trainer: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="flextrain trainer")
    add_arguments(parser)
    return run(parser.parse_args())
