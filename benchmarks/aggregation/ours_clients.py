"""Fake FlexTrain trainers for the benchmark: no training. Each client joins, then every
round pulls the model of its depth and pushes the pulled tensors back unchanged (a valid
update: same names, shapes and dtypes, finite values).

One process runs several clients as threads (the sync gRPC client releases the GIL on
network I/O); the benchmark starts a few such processes. Timestamps are wall-clock
(time.time()) so that processes on the same machine can be compared.

    python -m benchmarks.aggregation.ours_clients --spec FILE.json --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from flextrain.allocator import retain_freed_memory
from flextrain.trainer.client import AggregatorClient
from flextrain.trainer.config import TrainerConfig


def run_client(spec: dict[str, Any], client: dict[str, Any], start: threading.Barrier, out: dict[str, Any]) -> None:
    config = TrainerConfig(
        aggregator=spec["address"],
        token=spec["token"],
        job=spec["job"],
        tier=client["tier"],
        depth=int(client["depth"]),
        replica_index=int(client["replica"]),
        device="cpu",
    )
    agg = AggregatorClient(config)
    rounds: list[dict[str, Any]] = []
    out["rounds"] = rounds
    try:
        joined = agg.join()
        wire_dtype = joined.training.wire_dtype
        start.wait(timeout=120)
        for r in range(1, int(spec["rounds"]) + 1):
            t_pull = time.time()
            for _attempt in range(int(spec["max_pull_attempts"])):  # a long poll may time out
                pulled = agg.pull(joined.client_id, min_round=r, wait_seconds=float(spec["wait_seconds"]), reuse_buffer=True)
                if pulled.ready or pulled.done:
                    break
            t_pulled = time.time()
            if not pulled.ready or pulled.round != r:
                raise RuntimeError(f"pull of round {r} returned ready={pulled.ready} round={pulled.round} done={pulled.done}")
            pushed = agg.push(joined.client_id, r, pulled.tensors, 1, wire_dtype, 0.0, 0.0)
            t_pushed = time.time()
            rounds.append({"round": r, "pull_start": t_pull, "pulled": t_pulled, "push_end": t_pushed, "pulled_bytes": pulled.nbytes, "pushed_bytes": pushed})
            del pulled
    except Exception as exc:  # reported in the output file
        out["error"] = f"{type(exc).__name__}: {exc}"
        start.abort()
    finally:
        agg.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", type=Path, required=True, help="JSON: address, token, job, rounds, wait_seconds, clients[]")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    retain_freed_memory()  # as `flextrain trainer` does, before any thread starts
    torch.set_num_threads(1)
    spec = json.loads(args.spec.read_text())
    clients = spec["clients"]
    outs: list[dict[str, Any]] = [dict(c) for c in clients]
    start = threading.Barrier(len(clients))
    threads = [
        threading.Thread(target=run_client, args=(spec, c, start, o), name=f"client-{c['tier']}-{c['replica']}", daemon=True)
        for c, o in zip(clients, outs, strict=True)
    ]
    for t in threads:
        t.start()
    cpu0 = time.process_time()
    deadline = time.monotonic() + float(spec["timeout_seconds"])
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    for t, o in zip(threads, outs, strict=True):
        if t.is_alive():
            o.setdefault("error", "timed out")
    cpu = time.process_time() - cpu0  # all threads of this process, joins and rounds
    for o in outs:
        o["process_cpu_seconds"] = cpu / len(outs)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(outs))
    tmp.replace(args.out)
    return 0 if not any("error" in o for o in outs) else 1


if __name__ == "__main__":
    sys.exit(main())
