"""Real FlexTrain processes for integration tests: started on loopback, always killed by
pid, with bounded waits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flextrain.api.flextrainjob import FlexTrainJob
from flextrain.contract.credentials import ReplicaIdentity, replica_credential, tier_key
from flextrain.jobplan import JobPlan, plan_job
from flextrain.wire.auth import replica_metadata

REPO = Path(__file__).resolve().parents[2]
TOKEN = "integration-test-token"


def replica_auth(job: str, tier: str, replica: int, depth: int, token: str = TOKEN) -> tuple[tuple[str, str], ...]:
    """Call metadata of replica `replica` of `tier` (at `depth`), as its trainer sends it."""
    identity = ReplicaIdentity(tier, depth, replica)
    return replica_metadata(replica_credential(tier_key(token, job, tier), identity))


def tiny_job(name: str = "tiny", *, tiers: list[tuple[str, int, int]] | None = None, **spec: Any) -> FlexTrainJob:
    """A job that trains in seconds: ResNet-8 (3 blocks) on 600 synthetic 8x8 images."""
    tiers = tiers or [("shallow", 1, 1), ("middle", 2, 1), ("deep", 3, 1)]
    body: dict[str, Any] = {
        "apiVersion": "flextrain.dev/v1alpha1",
        "kind": "FlexTrainJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"family": "resnet", "layers": 8},
            "dataset": {"name": "synthetic", "limit": 900, "seed": 1},
            "training": {"rounds": 3, "localEpochs": 3, "batchSize": 32},
            "aggregation": {"strategy": "pad", "roundTimeoutSeconds": 60},
            "tiers": [
                {"name": n, "deviceTierRef": "local", "depth": d, "replicas": r} for n, d, r in tiers
            ],
        },
    }
    for key, value in spec.items():
        body["spec"].setdefault(key, {})
        if isinstance(value, dict):
            body["spec"][key].update(value)
        else:
            body["spec"][key] = value
    return FlexTrainJob.model_validate(body)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXTRAIN_")}
    env.update({"OMP_NUM_THREADS": "1", "FLEXTRAIN_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)


@dataclass
class Cluster:
    """An aggregator and its trainers, all real processes; `close()` kills every one."""

    root: Path
    plan: JobPlan
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    aggregator: Proc | None = None

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> Proc:
        log = self.root / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(argv, cwd=REPO, env=dict(env), stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_aggregator(self, *extra: str, port: int = 0, checkpoints: bool = True) -> Proc:
        plan_file = self.root / "plan.json"
        plan_file.write_text(self.plan.to_json())
        token_file = self.root / "token"
        token_file.write_text(TOKEN)
        port_file = self.root / "port"
        port_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "flextrain", "aggregator", "--plan", str(plan_file),
            "--token-file", str(token_file), "--host", "127.0.0.1", "--port", str(port),
            "--port-file", str(port_file), "--log-format", "text", *extra,
        ]
        if checkpoints:
            argv += ["--checkpoint-dir", str(self.root / "checkpoints")]
        proc = self._spawn(f"aggregator-{len(self.procs)}", argv, child_env())
        self.aggregator = proc

        def ready() -> bool:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"aggregator exited with {proc.popen.returncode}:\n{proc.output()}")
            return port_file.exists()

        wait_for(ready, 60, "the aggregator to listen")
        self.port = int(port_file.read_text())
        return proc

    def start_trainer(self, tier: str, replica: int, **env: str) -> Proc:
        depth = self.plan.tier(tier).depth
        variables = child_env(
            FLEXTRAIN_AGGREGATOR=f"127.0.0.1:{self.port}",
            FLEXTRAIN_TIER_KEY=tier_key(TOKEN, self.plan.name, tier),
            FLEXTRAIN_JOB=self.plan.name,
            FLEXTRAIN_TIER=tier,
            FLEXTRAIN_DEPTH=str(depth),
            FLEXTRAIN_REPLICA_INDEX=str(replica),
            FLEXTRAIN_DEVICE="cpu",
        )
        variables.update(env)
        argv = [sys.executable, "-m", "flextrain", "trainer", "--log-format", "text"]
        return self._spawn(f"trainer-{tier}-{replica}-{len(self.procs)}", argv, variables)

    def start_all_trainers(self) -> list[Proc]:
        return [self.start_trainer(t.name, i) for t in self.plan.tiers for i in range(t.replicas)]

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.output()[-3000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


def make_cluster(root: Path, job: FlexTrainJob) -> Cluster:
    root.mkdir(parents=True, exist_ok=True)
    return Cluster(root, plan_job(job, {}))
