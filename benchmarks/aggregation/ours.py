"""The FlexTrain side: a real `flextrain aggregator` process and fake trainers that do
no training (benchmarks/aggregation/ours_clients.py), all on loopback.

Round latency of round r = (the moment the aggregator answered the last push of r,
which it does only after merging, i.e. after closing the round) minus (the moment the
last client started its pull of r, i.e. when all clients are pulling). Round 1 is the
warm-up (joins, first encodes); the job has one round more than the clients run, so
the aggregator never reaches its last round and never evaluates (evaluateEveryRounds
is set beyond the job's rounds): evaluation is excluded by construction.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.aggregation.procs import Tracker, cpu_seconds, proc_status, wait_for

REPO = Path(__file__).resolve().parents[2]
TOKEN = "benchmark-token"
#: How the aggregator is started (argv before "aggregator ..."); experiments may swap it.
AGGREGATOR_COMMAND: list[str] = [sys.executable, "-m", "flextrain"]

#: The paper's Table 3 (arXiv 2310.20457): ResNet-56 depth k_j and devices per tier.
TABLE3_TIERS: tuple[tuple[str, int, int], ...] = (
    ("k8", 8, 2),
    ("k12", 12, 2),
    ("k16", 16, 2),
    ("k18", 18, 2),
    ("k21", 21, 2),
    ("k23", 23, 2),
    ("k25", 25, 2),
    ("k27", 27, 6),
)


@dataclass(frozen=True)
class Case:
    """One model + tier mix, measured on our side (and, for the full model, on Flower's)."""

    key: str
    label: str
    layers: int
    num_classes: int
    tiers: tuple[tuple[str, int, int], ...]  # (name, depth, replicas)
    #: Extra `flextrain aggregator` flags (a setting measured against the default).
    aggregator_args: tuple[str, ...] = ()

    @property
    def num_clients(self) -> int:
        return sum(r for _, _, r in self.tiers)


def job_body(case: Case, rounds: int) -> dict[str, Any]:
    return {
        "apiVersion": "flextrain.dev/v1alpha1",
        "kind": "FlexTrainJob",
        "metadata": {"name": f"bench-{case.key}"},
        "spec": {
            "model": {"family": "resnet", "layers": case.layers, "numClasses": case.num_classes},
            # Built in: no files needed. Its images are 1x8x8, so the stem has 1 input
            # channel (ResNet-56/100: 858,580 parameters instead of CIFAR's 858,868).
            "dataset": {"name": "synthetic", "seed": 0},
            "training": {"rounds": rounds, "localEpochs": 1, "batchSize": 64},
            "aggregation": {
                "strategy": "pad",
                "quorum": 1.0,
                "roundTimeoutSeconds": 3600,
                "evaluateEveryRounds": 100000,
                "compression": "none",
            },
            "tiers": [
                {"name": n, "deviceTierRef": "bench", "depth": d, "replicas": r} for n, d, r in case.tiers
            ],
        },
    }


def make_plan(case: Case, rounds: int) -> Any:
    from flextrain.api.flextrainjob import FlexTrainJob
    from flextrain.jobplan import plan_job

    return plan_job(FlexTrainJob.model_validate(job_body(case, rounds)), {})


def model_arrays(case: Case) -> dict[str, Any]:
    """The round-0 global model the aggregator starts from, as numpy arrays (for Flower)."""
    from flextrain.aggregator.service import initial_state

    state = initial_state(make_plan(case, 2))
    return {k: v.numpy() for k, v in state.items()}


def model_bytes(case: Case) -> int:
    """Bytes of the full model on the wire (float32 tensors, int64 BN counters)."""
    from flextrain.aggregator.service import model_spec_of

    spec = model_spec_of(make_plan(case, 2))
    state = spec.build().state_dict()
    return sum(v.numel() * v.element_size() for v in state.values())


def prefix_bytes(case: Case) -> dict[int, int]:
    """Wire bytes of each tier's prefix, from the aggregator's own expected specs."""
    from flextrain.aggregator.service import model_spec_of
    from flextrain.aggregator.state import Aggregation

    plan = make_plan(case, 2)
    agg = Aggregation(plan, model_spec_of(plan).build().state_dict())
    return {d: sum(s.num_bytes for s in agg.expected_specs(d).values()) for _, d, _ in case.tiers}


def _round_log_seconds(log: Path) -> dict[int, float]:
    """'round N closed: ... merged in S s' from the aggregator's JSON log."""
    out: dict[int, float] = {}
    if not log.exists():
        return out
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        msg = str(entry.get("message", ""))
        if msg.startswith("round ") and " closed: " in msg:
            try:
                number = int(msg.split()[1])
                seconds = float(msg.rsplit(" in ", 1)[1].split("s")[0])
            except (IndexError, ValueError):
                continue
            out[number] = seconds
    return out


def run_case(case: Case, tracker: Tracker, work: Path, *, warmup: int, measured: int, client_procs: int) -> dict[str, Any]:
    """Run one case end to end and return its raw numbers."""
    work.mkdir(parents=True, exist_ok=True)
    client_rounds = warmup + measured
    plan = make_plan(case, client_rounds + 1)
    plan_file = work / "plan.json"
    plan_file.write_text(plan.to_json())
    token_file = work / "token"
    token_file.write_text(TOKEN)
    port_file = work / "port"
    port_file.unlink(missing_ok=True)
    full_bytes = model_bytes(case)
    prefixes = prefix_bytes(case)

    agg_log = tracker.logs / f"ours-{case.key}-aggregator.log"
    agg_log.unlink(missing_ok=True)
    argv = [
        *AGGREGATOR_COMMAND, "aggregator",
        "--plan", str(plan_file), "--token-file", str(token_file),
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
        "--log-format", "json", "--device", "cpu", *case.aggregator_args,
    ]
    aggregator = tracker.start(f"ours-{case.key}-aggregator", argv, cwd=REPO)
    result: dict[str, Any] = {"case": case.key, "label": case.label, "clients": case.num_clients, "model_bytes": full_bytes}
    procs = []
    try:
        def listening() -> bool:
            if aggregator.poll() is not None:
                raise RuntimeError(f"aggregator exited with {aggregator.returncode}; see {agg_log}")
            return port_file.exists()

        wait_for(listening, 120, "the aggregator to listen")
        port = int(port_file.read_text())
        time.sleep(0.5)
        idle_rss = proc_status(aggregator.pid).get("VmRSS", 0)
        idle_cpu = cpu_seconds(aggregator.pid) or 0.0

        clients = [{"tier": n, "depth": d, "replica": i} for n, d, r in case.tiers for i in range(r)]
        n_procs = max(1, min(client_procs, len(clients)))
        groups = [clients[i::n_procs] for i in range(n_procs)]
        per_round_budget = 60 + 40 * full_bytes * case.num_clients / 1e9
        outs = []
        for i, group in enumerate(groups):
            spec = {
                "address": f"127.0.0.1:{port}",
                "token": TOKEN,
                "job": plan.name,
                "rounds": client_rounds,
                "wait_seconds": 30,
                "max_pull_attempts": max(2, math.ceil(per_round_budget / 30) + 1),
                "timeout_seconds": 60 + per_round_budget * client_rounds,
                "clients": group,
            }
            spec_file = work / f"clients-{i}.json"
            spec_file.write_text(json.dumps(spec))
            out = work / f"clients-{i}.out.json"
            out.unlink(missing_ok=True)
            outs.append(out)
            procs.append(tracker.start(
                f"ours-{case.key}-clients-{i}",
                [sys.executable, "-m", "benchmarks.aggregation.ours_clients", "--spec", str(spec_file), "--out", str(out)],
                cwd=REPO,
                env=tracker.env({"OMP_NUM_THREADS": "1"}),
            ))
        limit = 120 + per_round_budget * client_rounds
        wait_for(lambda: all(p.poll() is not None for p in procs), limit, "our clients to finish", interval=0.2)
        peak = tracker.peak_of(aggregator.pid)
        server_cpu = (cpu_seconds(aggregator.pid) or idle_cpu) - idle_cpu
        rows: list[dict[str, Any]] = []
        errors = []
        client_cpu = 0.0
        for out in outs:
            if not out.exists():
                errors.append(f"{out.name}: no output")
                continue
            for client in json.loads(out.read_text()):
                client_cpu += float(client.get("process_cpu_seconds", 0.0))
                if "error" in client:
                    errors.append(f"{client['tier']}-{client['replica']}: {client['error']}")
                rows.extend(dict(r, tier=client["tier"], replica=client["replica"]) for r in client.get("rounds", []))
        if errors:
            raise RuntimeError("client errors: " + "; ".join(errors[:5]))
        log_seconds = _round_log_seconds(agg_log)
    finally:
        for p in procs:
            if p.poll() is None:
                tracker.stop_pids([p.pid])
        tracker.stop_pids([aggregator.pid])

    per_round = []
    for r in range(warmup + 1, client_rounds + 1):
        these = [x for x in rows if x["round"] == r]
        if len(these) != case.num_clients:
            raise RuntimeError(f"round {r}: {len(these)} of {case.num_clients} clients reported")
        start = max(x["pull_start"] for x in these)
        end = max(x["push_end"] for x in these)
        nbytes = sum(x["pulled_bytes"] + x["pushed_bytes"] for x in these)
        per_round.append({"round": r, "seconds": end - start, "bytes": nbytes, "aggregator_log_seconds": log_seconds.get(r)})
    seconds = [x["seconds"] for x in per_round]
    bytes_per_round = statistics.median(x["bytes"] for x in per_round)
    fedavg_bytes = full_bytes * case.num_clients * 2
    median = statistics.median(seconds)
    expected = sum(prefixes[d] * r * 2 for _, d, r in case.tiers)
    result.update({
        "rounds": per_round,
        "round_seconds_median": median,
        "round_seconds_mean": statistics.fmean(seconds),
        "bytes_per_round": bytes_per_round,
        "bytes_per_round_expected": expected,
        "fedavg_bytes_per_round": fedavg_bytes,
        "bytes_share_of_fedavg": bytes_per_round / fedavg_bytes,
        "throughput_mib_s": bytes_per_round / median / 2**20,
        "server_peak_rss_bytes": peak,
        "server_idle_rss_bytes": idle_rss,
        "server_cpu_seconds_per_round": server_cpu / client_rounds,
        "clients_cpu_seconds_per_round": client_cpu / client_rounds,
        "client_processes": n_procs,
        "prefix_bytes": prefixes,
    })
    return result
