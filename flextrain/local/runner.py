"""`flextrain run JOB.yaml [TIERS.yaml ...]`: run a FlexTrainJob on this machine with
the very processes a cluster runs (one aggregator, one trainer per tier replica, real
gRPC on loopback), supervised like Kubernetes would, with progress and a report.

Resource sense: all trainer processes start (they must all push every round), but at
most `max_parallel` train at once (machine-wide slots, default: the number of CPU
cores), each with `cores // max_parallel` torch threads (at least 1), so a job with
more replicas than cores finishes without thrashing.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from flextrain.api.catalog import DATASETS
from flextrain.api.validation import ValidationResult, validate_files
from flextrain.contract import env as contract
from flextrain.contract.credentials import tier_key
from flextrain.contract.env import EXIT_PERMANENT, TrainerEnv
from flextrain.jobplan import JobPlan, PlanError, plan_job
from flextrain.local.progress import Progress
from flextrain.local.supervisor import Supervisor
from flextrain.wire.status import AggregatorStatus, StatusClient, StatusUnavailable

log = logging.getLogger("flextrain.run")


class RunError(Exception):
    """The run cannot start or cannot finish; the message says why and what to do."""


@dataclass
class RunOptions:
    files: list[Path]
    out: Path | None = None
    resume: bool = False
    fresh: bool = False
    port: int = 0
    max_parallel: int = 0
    threads: int = 0
    trainer_restarts: int = 6
    poll_seconds: float = 0.5
    command: list[str] | None = None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_job(files: list[Path]) -> tuple[JobPlan, ValidationResult]:
    """Validate exactly as `flextrain validate` does, then plan the single job."""
    result = validate_files(files)
    if not result.ok:
        raise RunError(result.to_text())
    if len(result.jobs) != 1:
        raise RunError(f"the files define {len(result.jobs)} FlexTrainJobs; `flextrain run` runs exactly one")
    job = result.jobs[0]
    try:
        plan = plan_job(job, {t.metadata.name: t for t in result.tiers})
    except PlanError as exc:
        raise RunError(f"cannot plan job {job.metadata.name}: {exc}") from exc
    return plan, result


def data_dir_for(plan: JobPlan, base: Path) -> Path | None:
    """The local dataset directory, checked before anything starts."""
    dataset = plan.job.spec.dataset
    info = DATASETS[dataset.name]
    if info.builtin:
        return None
    sources: set[str] = {t.data_source.path for t in plan.tiers if t.data_source and t.data_source.path}
    if dataset.source and dataset.source.path:
        sources.add(dataset.source.path)
    if not sources:
        raise RunError(
            f"dataset {dataset.name} needs a local directory for `flextrain run`: set "
            f"spec.dataset.source.path (persistentVolumeClaim and hostPath only exist in a cluster). "
            f"Obtain the data: {info.how_to_obtain}"
        )
    if len(sources) > 1:
        raise RunError(f"`flextrain run` needs one local data directory; the job names {sorted(sources)}")
    path = Path(sources.pop())
    path = path if path.is_absolute() else (base / path)
    if not path.is_dir():
        raise RunError(f"dataset directory {path} does not exist. Obtain the data: {info.how_to_obtain}")
    return path


def _check_port(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RunError(f"port {port} is not free ({exc.strerror}); pick another with --port or leave it out") from exc


class LocalRun:
    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.plan, _ = load_job(options.files)
        self.data_dir = data_dir_for(self.plan, Path.cwd())
        self.out = (options.out or Path("runs") / self.plan.name).resolve()
        checkpoint = self.plan.job.spec.checkpoint
        self.checkpoints = (Path(checkpoint.path) if checkpoint and checkpoint.path else self.out / "checkpoints").resolve()
        self.supervisor = Supervisor(pid_dir=self.out / ".state")
        self.cores = _cores()
        self.max_parallel = options.max_parallel or self.cores
        self.threads = options.threads or max(1, self.cores // self.max_parallel)
        self._stop_signal: int | None = None
        if options.port:
            _check_port(options.port)

    # -- preparation ----------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        existing = self.checkpoints.is_dir() and any(self.checkpoints.glob("round-*.pt"))
        if existing and not self.options.resume:
            if not self.options.fresh:
                raise RunError(
                    f"{self.checkpoints} holds checkpoints of an earlier run of {self.plan.name}: "
                    "pass --resume to continue it, or --fresh to start over"
                )
            shutil.rmtree(self.checkpoints)
        if self.options.resume and not existing:
            log.warning("--resume given but %s has no checkpoint: starting from round 1", self.checkpoints)
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        state = self.out / ".state"
        state.mkdir(exist_ok=True)
        (state / "plan.json").write_text(self.plan.to_json())
        token = state / "token"
        token.write_text(secrets.token_urlsafe(32))
        token.chmod(0o600)

    def _python(self) -> list[str]:
        return [sys.executable, "-m", "flextrain"]

    def _start_aggregator(self, port: int) -> None:
        state = self.out / ".state"
        port_file = state / "port"
        port_file.unlink(missing_ok=True)
        argv = [
            *self._python(), "aggregator", "--plan", str(state / "plan.json"), "--token-file", str(state / "token"),
            "--host", "127.0.0.1", "--port", str(port), "--port-file", str(port_file),
            "--checkpoint-dir", str(self.checkpoints), "--log-format", "json", "--threads", str(self.threads),
        ]
        if self.data_dir:
            argv += ["--data-dir", str(self.data_dir)]
        if "aggregator" in self.supervisor.children:
            self.supervisor.children["aggregator"].argv = argv  # used by the next restart
        else:
            self.supervisor.add("aggregator", argv, self._env(), self.out / "logs" / "aggregator.log", max_restarts=10)

    def _wait_for_port(self, timeout: float = 120.0) -> int:
        port_file = self.out / ".state" / "port"
        deadline = time.monotonic() + timeout
        child = self.supervisor.children["aggregator"]
        while time.monotonic() < deadline:
            if port_file.exists():
                return int(port_file.read_text())
            if not child.running and child.popen is not None:
                raise RunError(f"the aggregator exited with {child.popen.returncode}:\n{child.last_lines(15)}")
            time.sleep(0.05)
        raise RunError(f"the aggregator did not start within {timeout:.0f}s:\n{child.last_lines(15)}")

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(contract.PREFIX)}
        env.update(OMP_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def _start_trainers(self, port: int) -> None:
        token = (self.out / ".state" / "token").read_text()
        slots = self.out / ".state" / "slots"
        for tier in self.plan.tiers:
            for replica in range(tier.replicas):
                env = self._env(
                    **TrainerEnv(
                        aggregator=f"127.0.0.1:{port}",
                        tier_key=tier_key(token, self.plan.name, tier.name),
                        job=self.plan.name,
                        tier=tier.name,
                        depth=tier.depth,
                        replica_index=replica,
                        threads=self.threads,
                        slots_dir=slots,
                        slots=self.max_parallel,
                        device=os.environ.get(contract.DEVICE) or "auto",
                        data_dir=self.data_dir,
                    ).to_env()
                )
                name = f"trainer-{tier.name}-{replica}"
                argv = [*self._python(), "trainer", "--log-format", "json"]
                self.supervisor.add(name, argv, env, self.out / "logs" / f"{name}.log", self.options.trainer_restarts)

    # -- main loop ------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum

    def run(self) -> int:
        self._prepare_dirs()
        progress = Progress(self.plan.name)
        trainers = sum(t.replicas for t in self.plan.tiers)
        progress.message(
            f"flextrain run {self.plan.name}: {len(self.plan.tiers)} tiers, {trainers} trainers, "
            f"{self.plan.job.spec.training.rounds} rounds; {self.max_parallel} train at once with "
            f"{self.threads} thread(s) each; results in {self.out}"
        )
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        status: AggregatorStatus | None = None
        client: StatusClient | None = None
        try:
            self._start_aggregator(self.options.port)
            port = self._wait_for_port()
            self._start_aggregator(port)  # a restarted aggregator must come back on the same port
            self._start_trainers(port)
            token = (self.out / ".state" / "token").read_text()
            client = StatusClient(f"127.0.0.1:{port}", token)
            rounds_at_start: int | None = None
            while True:
                if self._stop_signal is not None:
                    return self._interrupted(progress)
                for event in self.supervisor.poll():
                    progress.message(event)
                agg = self.supervisor.children["aggregator"]
                if agg.finished:
                    raise RunError(f"the aggregator failed for good:\n{agg.last_lines(15)}")
                try:
                    status = client.get(timeout=2)
                except StatusUnavailable:
                    status = None
                if status is not None:
                    if rounds_at_start is None:
                        rounds_at_start = status.round
                    progress.update(status, rounds_at_start)
                    if status.done:
                        break
                self._check_trainers()
                time.sleep(self.options.poll_seconds)
            self._wait_trainers_done(progress)
            self.supervisor.stop(["aggregator"], grace=15)
            wall = time.monotonic() - started
            return self._finish(progress, wall)
        finally:
            if client:
                client.close()
            self.supervisor.stop(grace=10)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _check_trainers(self) -> None:
        trainers = [c for n, c in self.supervisor.children.items() if n.startswith("trainer-")]
        failed = [c for c in trainers if c.finished and c.exit_code not in (0, None)]
        if failed and all(c.finished for c in trainers):
            first = failed[0]
            raise RunError(f"every trainer stopped; {first.name} failed (exit {first.exit_code}):\n{first.last_lines(5)}")
        permanent = [c for c in failed if c.exit_code == EXIT_PERMANENT]
        if permanent:
            first = permanent[0]
            raise RunError(f"{first.name} cannot run: {first.last_lines(1)}")

    def _wait_trainers_done(self, progress: Progress, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.supervisor.poll()
            if all(c.finished or c.popen is None for n, c in self.supervisor.children.items() if n.startswith("trainer-")):
                return
            time.sleep(0.1)
        progress.message("some trainers did not exit after training completed; stopping them")

    def _interrupted(self, progress: Progress) -> int:
        name = signal.Signals(self._stop_signal or signal.SIGINT).name
        progress.message(f"{name} received: stopping every process (the checkpoint is kept)")
        self.supervisor.stop(grace=15)
        command = list(self.options.command or ["flextrain", "run", *map(str, self.options.files)])
        if "--resume" not in command:
            command.append("--resume")
        import shlex

        progress.message(f"stopped. Continue with: {shlex.join(command)}")
        return 130

    def _finish(self, progress: Progress, wall: float) -> int:
        from flextrain.aggregator.exports import export_models
        from flextrain.aggregator.rounds import model_spec_of
        from flextrain.aggregator.store import CheckpointStore
        from flextrain.local.report import plot_accuracy, write_report

        checkpoint = CheckpointStore(self.checkpoints).load_latest(self.plan.name)
        if checkpoint is None:
            raise RunError(f"training finished but {self.checkpoints} holds no checkpoint")
        spec = model_spec_of(self.plan)
        exports = export_models(self.plan, checkpoint, spec, self.out / "models")
        plot = plot_accuracy(checkpoint.accuracy_history, self.out / "accuracy.png", f"{self.plan.name}: accuracy per depth")
        restarts = {n: c.restarts for n, c in self.supervisor.children.items()}
        report = write_report(
            self.plan, checkpoint, spec, self.out, wall_seconds=wall,
            command=self.options.command or ["flextrain", "run", *map(str, self.options.files)],
            exports=exports, plot=plot, restarts=restarts,
        )
        final = {d: a for d, a in ((int(h["depth"]), h["accuracy"]) for h in checkpoint.accuracy_history)}
        progress.message(
            f"done in {wall:.1f}s: " + ", ".join(f"depth {d} {a:.3f}" for d, a in sorted(final.items()))
            + f"\nreport: {report}\nmodels: {self.out / 'models'}"
        )
        return 0
