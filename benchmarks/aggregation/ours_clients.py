"""Fake FlexTrain trainers for the benchmark: no training. Each client joins, then every
round pulls the model of its depth and pushes the pulled tensors back unchanged (a valid
update: same names, shapes and dtypes, finite values), after sleeping the spec's
``train_seconds`` (0 by default; a stand-in for local training that uses no CPU).

One process runs several clients as threads (the sync gRPC client releases the GIL on
network I/O); the benchmark starts a few such processes. Rounds are started by the
benchmark, as raw loopback's are (benchmarks/aggregation/loopback.py): files in the
spec's sync directory say when each round begins (go-R holds its wall-clock start) and
when this process's clients have all pushed it (done-P-R, with the process's CPU
seconds for the round). Channels are closed only when the benchmark says so (the
file ``teardown``), never while another process is still in a measured round.
Timestamps are wall-clock (time.time()) so that processes on the same machine can be
compared.

    python -m benchmarks.aggregation.ours_clients --spec FILE.json --out FILE.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.aggregation.procs import write_atomically
from flextrain.allocator import retain_freed_memory
from flextrain.contract.credentials import tier_key
from flextrain.trainer.client import AggregatorClient
from flextrain.trainer.config import TrainerConfig

#: How often the process looks for the benchmark's files. A round's go file names a
#: start time 0.2 s ahead, so this does not delay the round; it bounds the wake-ups of
#: a process that waits while other systems' rounds run (benchmarks/aggregation/bench.py
#: alternates them).
POLL_SECONDS = 0.02


def wait_file(path: Path, deadline: float, abort: threading.Event | None = None) -> None:
    while not path.exists():
        if time.monotonic() > deadline or (abort is not None and abort.is_set()):
            raise TimeoutError(f"waited too long for {path.name}")
        time.sleep(POLL_SECONDS)


class Rounds:
    """The benchmark's round gates, shared by the threads of this process: ``begin(r)``
    blocks until round r's start time; ``pushed()`` returns once every client of the
    process has pushed r, and the last one to arrive reports the round (done-P-R)."""

    def __init__(self, sync: Path, index: int, clients: int, deadline: float) -> None:
        self.sync = sync
        self.index = index
        self.deadline = deadline
        self.abort = threading.Event()
        self._round = 0
        self._cpu = 0.0
        self._begin_lock = threading.Lock()
        self._starts: dict[int, float] = {}
        self._all_pushed = threading.Barrier(clients, action=self._report)

    def begin(self, r: int) -> None:
        with self._begin_lock:  # one thread reads the file; the others share its value
            if r not in self._starts:
                go = self.sync / f"go-{r}"
                wait_file(go, self.deadline, self.abort)
                self._starts[r] = float(go.read_text())
                self._round, self._cpu = r, time.process_time()
            start = self._starts[r]
        time.sleep(max(0.0, start - time.time()))

    def pushed(self) -> None:
        self._all_pushed.wait(timeout=max(1.0, self.deadline - time.monotonic()))

    def _report(self) -> None:
        cpu = time.process_time() - self._cpu  # every thread of the process
        write_atomically(
            self.sync / f"done-{self.index}-{self._round}", json.dumps({"cpu_seconds": cpu})
        )

    def fail(self) -> None:
        self.abort.set()
        self._all_pushed.abort()


def run_client(
    spec: dict[str, Any],
    client: dict[str, Any],
    rounds: Rounds,
    out: dict[str, Any],
    keep: list[AggregatorClient],
) -> None:
    config = TrainerConfig(
        aggregator=spec["address"],
        tier_key=tier_key(spec["token"], spec["job"], client["tier"]),
        job=spec["job"],
        tier=client["tier"],
        depth=int(client["depth"]),
        replica_index=int(client["replica"]),
        device="cpu",
        tls_ca=Path(spec["tls_ca"]) if spec.get("tls_ca") else None,
    )
    agg = AggregatorClient(config)
    keep.append(agg)  # closed by main() after the teardown signal
    records: list[dict[str, Any]] = []
    out["rounds"] = records
    try:
        joined = agg.join()
        wire_dtype = joined.training.wire_dtype
        for r in range(1, int(spec["rounds"]) + 1):
            rounds.begin(r)
            t_pull = time.time()
            for _attempt in range(int(spec["max_pull_attempts"])):  # a long poll may time out
                pulled = agg.pull(
                    joined.client_id,
                    min_round=r,
                    wait_seconds=float(spec["wait_seconds"]),
                    reuse_buffer=True,
                )
                if pulled.ready or pulled.done:
                    break
            t_pulled = time.time()
            if not pulled.ready or pulled.round != r:
                raise RuntimeError(
                    f"pull of round {r} returned ready={pulled.ready} round={pulled.round} done={pulled.done}"
                )
            time.sleep(float(spec.get("train_seconds", 0.0)))  # simulated local training (no CPU)
            pushed = agg.push(joined.client_id, r, pulled.tensors, 1, wire_dtype, 0.0, 0.0)
            t_pushed = time.time()
            records.append(
                {
                    "round": r,
                    "pull_start": t_pull,
                    "pulled": t_pulled,
                    "push_end": t_pushed,
                    "pulled_bytes": pulled.nbytes,
                    "pushed_bytes": pushed,
                }
            )
            del pulled
            rounds.pushed()
    except Exception as exc:  # reported in the output file
        out["error"] = f"{type(exc).__name__}: {exc}"
        rounds.fail()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--spec",
        type=Path,
        required=True,
        help="JSON: address, token, job, rounds, wait_seconds, sync_dir, index, clients[]",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    retain_freed_memory()  # as `flextrain trainer` does, before any thread starts
    torch.set_num_threads(1)
    spec = json.loads(args.spec.read_text())
    clients = spec["clients"]
    deadline = time.monotonic() + float(spec["timeout_seconds"])
    rounds = Rounds(Path(spec["sync_dir"]), int(spec["index"]), len(clients), deadline)
    outs: list[dict[str, Any]] = [dict(c) for c in clients]
    keep: list[AggregatorClient] = []
    threads = [
        threading.Thread(
            target=run_client,
            args=(spec, c, rounds, o, keep),
            name=f"client-{c['tier']}-{c['replica']}",
            daemon=True,
        )
        for c, o in zip(clients, outs, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    for t, o in zip(threads, outs, strict=True):
        if t.is_alive():
            o.setdefault("error", "timed out")
    failed = any("error" in o for o in outs)
    write_atomically(args.out, json.dumps(outs))
    if not failed:  # keep the connections until no process is in a measured round
        with contextlib.suppress(TimeoutError):
            wait_file(Path(spec["sync_dir"]) / "teardown", deadline)
    for agg in keep:
        agg.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
