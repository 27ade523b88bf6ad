"""The FlexTrain side: a real `flextrain aggregator` process and fake trainers that do
no training (benchmarks/aggregation/ours_clients.py), all on loopback.

Round latency of round r = (the moment the aggregator answered the last push of r,
which it does only after merging, i.e. after closing the round) minus (the start time
the benchmark gave round r, which every client waits for before it pulls). Round 1 is
the warm-up (joins, first encodes); the job has one round more than the clients run, so
the aggregator never reaches its last round and never evaluates (evaluateEveryRounds
is set beyond the job's rounds): evaluation is excluded by construction.

Checkpointing is on, as the product runs by default: the operator always gives the
aggregator a checkpoint directory (an emptyDir at /var/lib/flextrain/checkpoints when
the job names no claim) and a job without `checkpoint` writes one every round
(`everyRounds` defaults to 1). Here the directory is on the run's work disk, and the
write (torch.save, fsync, rename) happens while the round closes, inside its latency.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.aggregation.procs import (
    Tracker,
    cpu_seconds,
    proc_status,
    wait_for,
    write_atomically,
)

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
    #: Give the aggregator a checkpoint directory (the product's default); False
    #: measures the rounds without the checkpoint writes, for comparison.
    checkpoint: bool = True
    #: Serve TLS with a certificate issued on the fly by the operator's per-job CA code
    #: (flextrain.operator.certs, ECDSA P-256) and have the clients verify it, as the
    #: operator's pods do.
    tls: bool = False

    @property
    def num_clients(self) -> int:
        return sum(r for _, _, r in self.tiers)


def table3_mix(clients: int) -> tuple[tuple[str, int, int], ...]:
    """The Table 3 mix for `clients` devices (a multiple of 10): the same depths, each
    tier's share of the devices kept (1/10 for each of k8 ... k25, 3/10 for k27)."""
    if clients % 10 or clients <= 0:
        raise ValueError(f"the Table 3 mix needs a positive multiple of 10 clients, got {clients}")
    return tuple((name, depth, replicas * clients // 20) for name, depth, replicas in TABLE3_TIERS)


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
                {"name": n, "deviceTierRef": "bench", "depth": d, "replicas": r}
                for n, d, r in case.tiers
            ],
        },
    }


def make_plan(case: Case, rounds: int) -> Any:
    from flextrain.api.flextrainjob import FlexTrainJob
    from flextrain.jobplan import plan_job

    return plan_job(FlexTrainJob.model_validate(job_body(case, rounds)), {})


def model_arrays(case: Case) -> dict[str, Any]:
    """The round-0 global model the aggregator starts from, as numpy arrays (for Flower)."""
    from flextrain.aggregator.rounds import initial_state

    state = initial_state(make_plan(case, 2))
    return {k: v.numpy() for k, v in state.items()}


def model_bytes(case: Case) -> int:
    """Bytes of the full model on the wire (float32 tensors, int64 BN counters)."""
    from flextrain.aggregator.rounds import model_spec_of

    spec = model_spec_of(make_plan(case, 2))
    state = spec.build().state_dict()
    return sum(v.numel() * v.element_size() for v in state.values())


def prefix_bytes(case: Case) -> dict[int, int]:
    """Wire bytes of each tier's prefix, from the aggregator's own expected specs."""
    from flextrain.aggregator.rounds import model_spec_of
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


class OursRun:
    """One case on our side, round by round, so that its rounds can alternate with
    another system's (the raw rounds of the same traffic): ``start`` (the aggregator up,
    the clients joined and waiting), ``run_round`` for rounds 1, 2, ... (the first
    ``warmup`` are not counted), then ``finish`` for the numbers. ``close`` stops every
    process; use the object as a context manager.

    A round begins at a start time the clients wait for (all at once, as raw loopback's
    clients do) and ends when the aggregator has answered the last push, which it does
    only after merging, i.e. after closing the round.
    """

    def __init__(
        self,
        case: Case,
        tracker: Tracker,
        work: Path,
        *,
        warmup: int,
        measured: int,
        client_procs: int,
        train_seconds: float = 0.0,
    ) -> None:
        self.case, self.tracker, self.work = case, tracker, work
        self.train_seconds = train_seconds
        self.warmup = warmup
        self.client_rounds = warmup + measured
        self.n_procs = max(1, min(client_procs, case.num_clients))
        self.full_bytes = model_bytes(case)
        self.per_round_budget = 60 + 40 * self.full_bytes * case.num_clients / 1e9 + train_seconds
        self.sync = work / "sync"
        self.agg_log = tracker.logs / f"ours-{case.key}-aggregator.log"
        self.checkpoints = work / "checkpoints" if case.checkpoint else None
        self.aggregator: Any = None
        self.procs: list[Any] = []
        self.outs: list[Path] = []
        self.idle_rss = 0
        self.idle_cpu = 0.0
        self._begins: dict[int, float] = {}
        self._server_cpu: dict[int, float] = {}
        self._clients_cpu: dict[int, float] = {}
        self._done_rounds = 0

    def __enter__(self) -> OursRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        case, work, tracker = self.case, self.work, self.tracker
        work.mkdir(parents=True, exist_ok=True)
        self.sync.mkdir(parents=True, exist_ok=True)
        for f in self.sync.iterdir():
            f.unlink()
        plan = make_plan(case, self.client_rounds + 1)
        plan_file = work / "plan.json"
        plan_file.write_text(plan.to_json())
        token_file = work / "token"
        token_file.write_text(TOKEN)
        port_file = work / "port"
        port_file.unlink(missing_ok=True)
        self.agg_log.unlink(missing_ok=True)
        tls_args: list[str] = []
        tls_ca: str | None = None
        if case.tls:
            import datetime as dt

            from flextrain.operator import certs

            # The certificate names the address the clients dial, as the job's names its Service.
            chain = certs.issue("benchmark CA", ["127.0.0.1", "localhost"], now=dt.datetime.now(dt.UTC), days=1)
            for key, text in chain.secret_data().items():
                (work / key).write_text(text)
            tls_args = ["--tls-cert", str(work / certs.CERT_KEY), "--tls-key", str(work / certs.KEY_KEY)]
            tls_ca = str(work / certs.CA_CERT_KEY)
        checkpoint_args: list[str] = []
        if self.checkpoints is not None:
            shutil.rmtree(self.checkpoints, ignore_errors=True)  # a fresh job, not a resumed one
            checkpoint_args = ["--checkpoint-dir", str(self.checkpoints)]
        argv = [
            *AGGREGATOR_COMMAND,
            "aggregator",
            "--plan",
            str(plan_file),
            "--token-file",
            str(token_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--log-format",
            "json",
            "--device",
            "cpu",
            *checkpoint_args,
            *tls_args,
            *case.aggregator_args,
        ]
        aggregator = self.aggregator = tracker.start(f"ours-{case.key}-aggregator", argv, cwd=REPO)

        def listening() -> bool:
            if aggregator.poll() is not None:
                raise RuntimeError(
                    f"aggregator exited with {aggregator.returncode}; see {self.agg_log}"
                )
            return port_file.exists()

        wait_for(listening, 120, "the aggregator to listen")
        port = int(port_file.read_text())
        time.sleep(0.5)
        self.idle_rss = proc_status(aggregator.pid).get("VmRSS", 0)
        self.idle_cpu = cpu_seconds(aggregator.pid) or 0.0

        clients = [
            {"tier": n, "depth": d, "replica": i} for n, d, r in case.tiers for i in range(r)
        ]
        groups = [clients[i :: self.n_procs] for i in range(self.n_procs)]
        for i, group in enumerate(groups):
            spec = {
                "address": f"127.0.0.1:{port}",
                "token": TOKEN,
                "job": plan.name,
                "rounds": self.client_rounds,
                "wait_seconds": 30,
                "max_pull_attempts": max(2, math.ceil(self.per_round_budget / 30) + 1),
                "timeout_seconds": 600 + self.per_round_budget * self.client_rounds,
                "sync_dir": str(self.sync),
                "train_seconds": self.train_seconds,
                "tls_ca": tls_ca,
                "index": i,
                "clients": group,
            }
            spec_file = work / f"clients-{i}.json"
            spec_file.write_text(json.dumps(spec))
            out = work / f"clients-{i}.out.json"
            out.unlink(missing_ok=True)
            self.outs.append(out)
            self.procs.append(
                tracker.start(
                    f"ours-{case.key}-clients-{i}",
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.aggregation.ours_clients",
                        "--spec",
                        str(spec_file),
                        "--out",
                        str(out),
                    ],
                    cwd=REPO,
                    env=tracker.env({"OMP_NUM_THREADS": "1"}),
                )
            )

    def _failed(self) -> str | None:
        if self.aggregator.poll() is not None:
            return f"the aggregator exited with {self.aggregator.returncode}; see {self.agg_log}"
        for i, p in enumerate(self.procs):
            if p.poll() not in (None, 0):
                return f"client process {i} exited with {p.returncode}; see {self.work / f'clients-{i}.out.json'}"
        return None

    def run_round(self) -> None:
        """The next round: every client pulls, then pushes; returns when all have."""
        r = self._done_rounds + 1
        if r > self.client_rounds:
            raise RuntimeError(f"all {self.client_rounds} rounds have run")
        begin = time.time() + 0.2
        before = cpu_seconds(self.aggregator.pid)
        write_atomically(self.sync / f"go-{r}", repr(begin))
        names = [self.sync / f"done-{i}-{r}" for i in range(self.n_procs)]

        def all_pushed() -> bool:
            failed = self._failed()
            if failed:
                raise RuntimeError(f"round {r}: {failed}")
            return all(n.exists() for n in names)

        wait_for(all_pushed, 60 + self.per_round_budget, f"round {r} of our clients", interval=0.01)
        after = cpu_seconds(self.aggregator.pid)
        self._begins[r] = begin
        if before is not None and after is not None:
            self._server_cpu[r] = after - before
        self._clients_cpu[r] = sum(float(json.loads(n.read_text())["cpu_seconds"]) for n in names)
        self._done_rounds = r

    def finish(self) -> dict[str, Any]:
        """Tear the clients down (after the last round) and return the raw numbers."""
        case = self.case
        while self._done_rounds < self.client_rounds:
            self.run_round()
        peak = self.tracker.peak_of(self.aggregator.pid)
        server_cpu = (cpu_seconds(self.aggregator.pid) or self.idle_cpu) - self.idle_cpu
        (self.sync / "teardown").write_text("")
        wait_for(
            lambda: all(p.poll() is not None for p in self.procs),
            120,
            "our clients to exit",
            interval=0.05,
        )
        rows: list[dict[str, Any]] = []
        errors = []
        for out in self.outs:
            if not out.exists():
                errors.append(f"{out.name}: no output")
                continue
            for client in json.loads(out.read_text()):
                if "error" in client:
                    errors.append(f"{client['tier']}-{client['replica']}: {client['error']}")
                rows.extend(
                    dict(r, tier=client["tier"], replica=client["replica"])
                    for r in client.get("rounds", [])
                )
        if errors:
            raise RuntimeError("client errors: " + "; ".join(errors[:5]))
        log_seconds = _round_log_seconds(self.agg_log)
        prefixes = prefix_bytes(case)
        measured = range(self.warmup + 1, self.client_rounds + 1)
        per_round = []
        for r in measured:
            these = [x for x in rows if x["round"] == r]
            if len(these) != case.num_clients:
                raise RuntimeError(
                    f"round {r}: {len(these)} of {case.num_clients} clients reported"
                )
            end = max(x["push_end"] for x in these)
            nbytes = sum(x["pulled_bytes"] + x["pushed_bytes"] for x in these)
            to_model = sorted(x["pulled"] - self._begins[r] for x in these)
            per_round.append(
                {
                    "round": r,
                    "seconds": end - self._begins[r],
                    "bytes": nbytes,
                    # From the round's start until a client holds its model: first, median, last client.
                    "time_to_model": [to_model[0], statistics.median(to_model), to_model[-1]],
                    "aggregator_log_seconds": log_seconds.get(r),
                    "server_cpu_seconds": self._server_cpu.get(r),
                    "clients_cpu_seconds": self._clients_cpu[r],
                }
            )
        seconds = [x["seconds"] for x in per_round]
        bytes_per_round = statistics.median(x["bytes"] for x in per_round)
        fedavg_bytes = self.full_bytes * case.num_clients * 2
        median = statistics.median(seconds)
        expected = sum(prefixes[d] * r * 2 for _, d, r in case.tiers)
        server_round_cpu = [
            x["server_cpu_seconds"] for x in per_round if x["server_cpu_seconds"] is not None
        ]
        return {
            "case": case.key,
            "label": case.label,
            "clients": case.num_clients,
            "model_bytes": self.full_bytes,
            "rounds": per_round,
            "round_seconds_median": median,
            "round_seconds_best": min(seconds),
            "round_seconds_mean": statistics.fmean(seconds),
            "time_to_model_seconds": [
                statistics.median(x["time_to_model"][i] for x in per_round) for i in range(3)
            ],
            "bytes_per_round": bytes_per_round,
            "bytes_per_round_expected": expected,
            "fedavg_bytes_per_round": fedavg_bytes,
            "bytes_share_of_fedavg": bytes_per_round / fedavg_bytes,
            "throughput_mib_s": bytes_per_round / median / 2**20,
            "server_peak_rss_bytes": peak,
            "server_idle_rss_bytes": self.idle_rss,
            # CPU of the measured rounds, from each round's start to its last push (the
            # clients' includes their wait for the start time, as raw loopback's does).
            "server_cpu_seconds_per_round": statistics.fmean(server_round_cpu)
            if server_round_cpu
            else None,
            "clients_cpu_seconds_per_round": statistics.fmean(
                x["clients_cpu_seconds"] for x in per_round
            ),
            # The whole run's, joins and warm-up included.
            "server_cpu_seconds_total": server_cpu,
            "client_processes": self.n_procs,
            "prefix_bytes": prefixes,
            "checkpoint": self._checkpoints_written(),
        }

    def _checkpoints_written(self) -> dict[str, Any] | None:
        """The checkpoint files left (the store keeps the newest two), or None when off."""
        if self.checkpoints is None:
            return None
        files = sorted(self.checkpoints.glob("round-*.pt"))
        return {
            "dir": str(self.checkpoints),
            "files": [f.name for f in files],
            "bytes": files[-1].stat().st_size if files else 0,
        }

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.tracker.stop_pids([p.pid])
        if self.aggregator is not None:
            self.tracker.stop_pids([self.aggregator.pid])


def run_case(
    case: Case,
    tracker: Tracker,
    work: Path,
    *,
    warmup: int,
    measured: int,
    client_procs: int,
    train_seconds: float = 0.0,
) -> dict[str, Any]:
    """Run one case end to end, on its own, and return its raw numbers."""
    with OursRun(
        case,
        tracker,
        work,
        warmup=warmup,
        measured=measured,
        client_procs=client_procs,
        train_seconds=train_seconds,
    ) as run:
        run.start()
        return run.finish()
