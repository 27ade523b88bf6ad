"""Flower's legacy gRPC bidirectional-streaming path (`start_server` / `start_client`,
shipped under `flwr.compat`): FedAvg of a fixed model, clients that return what they got.

Runs with the Python that has `flwr` installed (Flower pins protobuf<7, FlexTrain's
stubs need protobuf>=7, so they live in separate virtualenvs); imports neither torch
nor flextrain.

    python flower_legacy.py server --port P --model M.npz --rounds R --clients N --out F.json [--sync-dir D]
    python flower_legacy.py clients --port P --count K

With --sync-dir the benchmark starts each round, so that Flower's rounds can alternate
with other systems' (benchmarks/aggregation/bench.py): round R begins at the wall-clock
time the file go-R holds, once it exists, and done-R is written when its aggregate ends.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


#: How often the server looks for the benchmark's go-R file. The file names a start time
#: 0.2 s ahead, so this only bounds the wake-ups of a server that waits its turn.
POLL_SECONDS = 0.02


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _await_start(sync: Path, server_round: int) -> None:
    """Block until the benchmark's start time for `server_round` (go-R) has come."""
    go = sync / f"go-{server_round}"
    while not go.exists():
        time.sleep(POLL_SECONDS)
    time.sleep(max(0.0, float(go.read_text()) - time.time()))


def serve(args: argparse.Namespace) -> int:
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg

    with np.load(args.model) as data:
        arrays = [data[k] for k in data.files]
    model_bytes = int(sum(a.nbytes for a in arrays))
    idle_rss = _status("VmRSS")

    class TimedFedAvg(FedAvg):
        """FedAvg that timestamps each round: configure_fit start -> aggregate_fit end."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rounds: dict[int, dict[str, float]] = {}

        def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
            if args.sync_dir is not None:
                _await_start(args.sync_dir, server_round)
            entry = self.rounds[server_round] = {"start": time.time()}
            out = super().configure_fit(server_round, parameters, client_manager)
            entry["sent_bytes"] = sum(len(t) for t in parameters.tensors) * len(out)
            entry["configured"] = time.time()
            return out

        def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
            entry = self.rounds[server_round]
            entry["results_in"] = time.time()
            entry["results"] = len(results)
            entry["failures"] = len(failures)
            entry["received_bytes"] = sum(
                sum(len(t) for t in r.parameters.tensors) for _, r in results
            )
            out = super().aggregate_fit(server_round, results, failures)
            entry["end"] = time.time()
            if args.sync_dir is not None:
                _write(args.sync_dir / f"done-{server_round}", json.dumps(entry))
            return out

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=0,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(arrays),
    )
    del arrays
    started = time.time()
    cpu0 = time.process_time()
    start_server(
        server_address=f"127.0.0.1:{args.port}",
        config=ServerConfig(num_rounds=args.rounds, round_timeout=args.round_timeout),
        strategy=strategy,
    )
    result = {
        "rounds": strategy.rounds,
        "model_bytes": model_bytes,
        "server_idle_rss_bytes": idle_rss,
        "server_peak_rss_bytes": _status("VmHWM"),
        "wall_seconds": time.time() - started,
        "cpu_seconds": time.process_time() - cpu0,
    }
    _write(args.out, json.dumps(result))
    return 0


def clients(args: argparse.Namespace) -> int:
    from flwr.client import NumPyClient, start_client

    class EchoClient(NumPyClient):
        """No training: fit() returns the received parameters unchanged."""

        def get_parameters(self, config):  # type: ignore[no-untyped-def]
            return []

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            if not first_fit:
                first_fit.append(time.process_time())
            return parameters, 1, {}

    errors: list[str] = []
    first_fit: list[float] = []

    def one() -> None:
        try:
            start_client(
                server_address=f"127.0.0.1:{args.port}",
                client=EchoClient().to_client(),
                max_retries=30,
                max_wait_time=120,
            )
        except BaseException as exc:  # reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(args.count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + args.timeout
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if args.out:
        # CPU of this process from its first fit() (connections made) to the end.
        args.out.write_text(
            json.dumps({"cpu_seconds": time.process_time() - (first_fit[0] if first_fit else 0.0)})
        )
    if errors:
        print("client errors:", errors[:3], file=sys.stderr)
    return 1 if errors or any(t.is_alive() for t in threads) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--rounds", type=int, required=True)
    s.add_argument("--clients", type=int, required=True)
    s.add_argument("--round-timeout", type=float, default=600.0)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument(
        "--sync-dir", type=Path, help="wait for go-R before round R, write done-R after it"
    )
    c = sub.add_parser("clients")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--timeout", type=float, default=1800.0)
    c.add_argument("--out", type=Path, help="write this process's CPU seconds here (JSON)")
    args = p.parse_args(argv)
    return serve(args) if args.cmd == "server" else clients(args)


if __name__ == "__main__":
    sys.exit(main())
