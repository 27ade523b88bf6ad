"""`flextrain aggregator`: run one job's aggregator until SIGTERM.

Every flag has an environment variable of the contract in flextrain.contract.env
(`AggregatorEnv`; the operator sets them in the Deployment, the table is in
docs/aggregator.md); a flag wins over its variable. `--port-file FILE` writes the bound
port there once listening. Exit code 2 (EXIT_PERMANENT) with a one-line reason when the
configuration is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flextrain.allocator import retain_freed_memory
from flextrain.contract.env import EXIT_PERMANENT, LOG_FORMATS, AggregatorEnv, EnvError
from flextrain.logs import setup_logging

if TYPE_CHECKING:
    from flextrain.aggregator.servicer import AggregatorServer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", type=Path, help="JobPlan JSON file (default: $FLEXTRAIN_PLAN text)")
    p.add_argument("--token-file", type=Path, help="file holding the job token (default: $FLEXTRAIN_TOKEN)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, help="gRPC port (default: $FLEXTRAIN_PORT, else 50051; 0: any free port)")
    p.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (default: $FLEXTRAIN_METRICS_PORT; 0: off)")
    p.add_argument("--health-port", type=int, help="plaintext port of the gRPC health service alone, for probes (default: $FLEXTRAIN_HEALTH_PORT; 0: off)")
    p.add_argument("--checkpoint-dir", type=Path)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument("--tls-client-ca", type=Path)
    p.add_argument("--device", help="evaluation device: auto, cpu or cuda")
    p.add_argument("--threads", type=int, help="torch threads for evaluation (0: torch's default); merges use one")
    p.add_argument("--log-format", choices=LOG_FORMATS)
    p.add_argument("--push-idle-seconds", type=float, help="longest wait for a push's header and each chunk (default 10)")
    p.add_argument("--push-grace-seconds", type=float, help="waiting a push may spend beyond its bytes at the minimum rate (default 10)")
    p.add_argument("--push-min-bytes-per-second", type=float, help="slowest push taken (default 262144)")


class ConfigError(Exception):
    """The aggregator was started without what it needs; exit code EXIT_PERMANENT."""


def _settings(args: argparse.Namespace) -> argparse.Namespace:
    """The flags, each unset one taken from its environment variable."""
    env = AggregatorEnv.from_env()
    merged = vars(args).copy()
    for key, value in vars(env).items():
        if merged.get(key) is None:
            merged[key] = value
    return argparse.Namespace(**merged)


def run(args: argparse.Namespace) -> int:
    try:
        args = _settings(args)
    except EnvError as exc:
        print(f"flextrain aggregator: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    setup_logging(args.log_format)
    retain_freed_memory()
    try:
        server_args = _configure(args)
    except ConfigError as exc:
        print(f"flextrain aggregator: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    return asyncio.run(_serve(*server_args, port_file=args.port_file))


def _configure(args: argparse.Namespace) -> tuple[Callable[[], AggregatorServer]]:
    import torch

    from flextrain.aggregator.flow import (
        PUSH_GRACE_SECONDS,
        PUSH_IDLE_SECONDS,
        PUSH_MIN_BYTES_PER_SECOND,
        PushTimeouts,
    )
    from flextrain.aggregator.metrics import AggregatorMetrics
    from flextrain.aggregator.service import AggregatorService, Settings
    from flextrain.aggregator.servicer import AggregatorServer, TlsFiles
    from flextrain.jobplan import JobPlan, PlanError

    plan_text = args.plan.read_text() if isinstance(args.plan, Path) else args.plan
    if not plan_text:
        raise ConfigError("no job plan: pass --plan FILE or set FLEXTRAIN_PLAN")
    try:
        plan = JobPlan.from_json(plan_text)
    except (ValueError, KeyError, PlanError) as exc:
        raise ConfigError(f"invalid job plan: {exc}") from exc
    token = args.token_file.read_text().strip() if args.token_file else args.token
    if not token:
        raise ConfigError("no job token: pass --token-file FILE or set FLEXTRAIN_TOKEN")
    # Folding updates is a memory-bound pass per chunk that runs beside the network
    # threads: one thread does it for less CPU than torch's pool (measured: 0.2 CPU s a
    # round less with 20 clients on 2 cores). Evaluation gets --threads.
    eval_threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(1)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    try:
        timeouts = PushTimeouts(
            idle_seconds=args.push_idle_seconds or PUSH_IDLE_SECONDS,
            grace_seconds=args.push_grace_seconds or PUSH_GRACE_SECONDS,
            min_bytes_per_second=args.push_min_bytes_per_second or PUSH_MIN_BYTES_PER_SECOND,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    metrics = AggregatorMetrics(plan.name)
    settings = Settings(
        push_timeouts=timeouts,
        checkpoint_dir=args.checkpoint_dir,
        data_dir=args.data_dir,
        device=device,
        eval_threads=eval_threads,
    )
    try:
        service = AggregatorService(plan, settings, metrics)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
    if args.metrics_port:
        try:
            metrics.serve(args.metrics_port)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on port {args.metrics_port}: {exc}") from exc

    def make_server() -> AggregatorServer:  # grpc.aio needs the running event loop
        return AggregatorServer(
            service, token, host=args.host, port=args.port, tls=tls, health_port=args.health_port
        )

    return (make_server,)


async def _serve(make_server: Callable[[], AggregatorServer], *, port_file: Path | None) -> int:
    try:
        server = make_server()
    except OSError as exc:
        print(f"flextrain aggregator: {exc}", file=sys.stderr)
        return EXIT_PERMANENT

    def announce(port: int) -> None:
        if port_file:  # written atomically: readers never see a partial number
            tmp = port_file.with_name(port_file.name + ".tmp")
            tmp.write_text(str(port))
            tmp.replace(port_file)

    await server.serve_until_signal(on_started=announce)
    return 0
