"""`flextrain operator`: run the kopf operator (the handlers in flextrain.operator.handlers).

Settings come from FLEXTRAIN_OPERATOR_* variables (flextrain/operator/config.py); the
flags below override the watching scope and set the process-level options.

| flag | meaning |
|---|---|
| -A / --all-namespaces | serve FlexTrainJobs in every namespace (default when no -n) |
| -n / --namespace NS | serve FlexTrainJobs in NS only (repeatable) |
| --liveness URL | kopf's liveness endpoint (default http://0.0.0.0:8080/healthz; "" = off) |
| --log-format text\\|json | log lines for people or for collectors (default json) |
| --verbose | debug logging |
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"


def add_arguments(p: argparse.ArgumentParser) -> None:
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch FlexTrainJobs cluster-wide (the default without -n)",
    )
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch FlexTrainJobs in this namespace only (repeatable)",
    )
    p.add_argument(
        "--liveness",
        default=os.environ.get("FLEXTRAIN_OPERATOR_LIVENESS", DEFAULT_LIVENESS),
        help=f"liveness endpoint URL (default {DEFAULT_LIVENESS}; empty: none)",
    )
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("FLEXTRAIN_LOG_FORMAT", "json"),
    )
    p.add_argument("--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from flextrain.logs import setup_logging
    from flextrain.operator.config import OperatorSettings, SettingsError

    setup_logging(args.log_format, "DEBUG" if args.verbose else "INFO")
    if not args.verbose:  # kopf logs every handler call at INFO; our own logs say what matters
        for name in ("kopf.objects", "kopf.activities", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        settings = OperatorSettings.from_env()
    except SettingsError as exc:
        print(f"flextrain operator: {exc}", file=sys.stderr)
        return 2
    if args.namespace:
        settings = dataclasses.replace(settings, namespaces=tuple(args.namespace))
    elif args.all_namespaces:
        settings = dataclasses.replace(settings, namespaces=())

    from flextrain.operator.handlers import run_operator
    from flextrain.operator.leader import LeadershipLost

    try:
        asyncio.run(run_operator(settings, liveness_endpoint=args.liveness or None))
    except KeyboardInterrupt:
        return 130
    except LeadershipLost as exc:
        # Exit non-zero so that the pod's container restarts, as a standby.
        print(f"flextrain operator: leadership lost, exiting: {exc}", file=sys.stderr)
        return 1
    except SettingsError as exc:
        print(f"flextrain operator: {exc}", file=sys.stderr)
        return 2
    return 0
