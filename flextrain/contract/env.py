"""The environment of the trainer and aggregator processes: one definition that the
operator's pod builders and `flextrain run` write (`to_env()`), the trainer and the
aggregator read (`from_env()`), the API reserves (`RESERVED`) and the docs show
(`markdown_table()`, checked against docs/aggregator.md by the tests).

Every value crosses as text. `from_env()` refuses what is malformed with an `EnvError`
that names the variable, what was wrong and what is allowed; an empty variable counts
as unset.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# -- names --------------------------------------------------------------------------------

AGGREGATOR: Final = "FLEXTRAIN_AGGREGATOR"
TOKEN: Final = "FLEXTRAIN_TOKEN"
TIER_KEY: Final = "FLEXTRAIN_TIER_KEY"
JOB: Final = "FLEXTRAIN_JOB"
TIER: Final = "FLEXTRAIN_TIER"
DEPTH: Final = "FLEXTRAIN_DEPTH"
REPLICA_INDEX: Final = "FLEXTRAIN_REPLICA_INDEX"
DATA_DIR: Final = "FLEXTRAIN_DATA_DIR"
PARTITION: Final = "FLEXTRAIN_PARTITION"
DEVICE: Final = "FLEXTRAIN_DEVICE"
THREADS: Final = "FLEXTRAIN_THREADS"
LOG_FORMAT: Final = "FLEXTRAIN_LOG_FORMAT"
TLS_CA: Final = "FLEXTRAIN_TLS_CA"
TLS_CERT: Final = "FLEXTRAIN_TLS_CERT"
TLS_KEY: Final = "FLEXTRAIN_TLS_KEY"
TLS_CLIENT_CA: Final = "FLEXTRAIN_TLS_CLIENT_CA"
TLS_SERVER_NAME: Final = "FLEXTRAIN_TLS_SERVER_NAME"
HEALTH_PORT: Final = "FLEXTRAIN_HEALTH_PORT"
TRAINING_SLOTS: Final = "FLEXTRAIN_TRAINING_SLOTS"
MALLOC_RETAIN: Final = "FLEXTRAIN_MALLOC_RETAIN"
PLAN: Final = "FLEXTRAIN_PLAN"
PORT: Final = "FLEXTRAIN_PORT"
METRICS_PORT: Final = "FLEXTRAIN_METRICS_PORT"
CHECKPOINT_DIR: Final = "FLEXTRAIN_CHECKPOINT_DIR"
PUSH_IDLE_SECONDS: Final = "FLEXTRAIN_PUSH_IDLE_SECONDS"
PUSH_GRACE_SECONDS: Final = "FLEXTRAIN_PUSH_GRACE_SECONDS"
PUSH_MIN_BYTES_PER_SECOND: Final = "FLEXTRAIN_PUSH_MIN_BYTES_PER_SECOND"
#: The directory under FLEXTRAIN_CHECKPOINT_DIR where the aggregator writes one sub-model
#: per tier when training completes (the operator reports it in status.model.exports).
EXPORTS_DIR: Final = "models"
#: Set by Kubernetes in the pods of an Indexed Job: the trainer's replica by default.
COMPLETION_INDEX: Final = "JOB_COMPLETION_INDEX"
#: Every variable of the contract starts with this (`flextrain run` clears them all
#: from its own environment before starting a process).
PREFIX: Final = "FLEXTRAIN_"

#: What the operator always sets itself: a pod template may not name these.
RESERVED: Final[tuple[str, ...]] = (
    TOKEN,
    TIER_KEY,
    JOB,
    TIER,
    DEPTH,
    PLAN,
    REPLICA_INDEX,
    COMPLETION_INDEX,
)

#: A trainer or aggregator that exits with this code failed for good (bad environment,
#: rejected token, unknown job or tier, depth mismatch): the operator's pod failure
#: policy fails the index at once and `flextrain run` does not restart the process.
EXIT_PERMANENT: Final = 2

DEVICES: Final[tuple[str, ...]] = ("auto", "cpu", "cuda")
LOG_FORMATS: Final[tuple[str, ...]] = ("json", "text")
DEFAULT_PORT: Final = 50051


class EnvError(ValueError):
    """The environment does not meet the contract; the message names the variable."""


def partition_label(scheme: str, alpha: float | None) -> str:
    """The FLEXTRAIN_PARTITION form of a partition: `iid` or `dirichlet:<alpha>`."""
    return scheme if scheme == "iid" or alpha is None else f"{scheme}:{alpha:g}"


# -- reading ------------------------------------------------------------------------------


class _Reader:
    def __init__(self, env: Mapping[str, str] | None) -> None:
        self.env = os.environ if env is None else env

    def get(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def need(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise EnvError(f"{name} is not set")
        return value

    def integer(self, name: str, default: int, low: int, value: str | None = None) -> int:
        raw = value if value is not None else self.get(name)
        if raw is None:
            return default
        try:
            number = int(raw)
        except ValueError:
            raise EnvError(f"{name}={raw!r} is not an integer") from None
        if number < low:
            raise EnvError(f"{name}={number} must be >= {low}")
        return number

    def port(self, name: str, default: int, low: int) -> int:
        number = self.integer(name, default, low)
        if number > 65535:
            raise EnvError(f"{name}={number} is not a port: use {low}..65535")
        return number

    def positive(self, name: str) -> float | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            number = float(raw)
        except ValueError:
            raise EnvError(f"{name}={raw!r} is not a number") from None
        if not 0 < number < float("inf"):
            raise EnvError(f"{name}={raw} must be a positive finite number")
        return number

    def path(self, name: str) -> Path | None:
        value = self.get(name)
        return Path(value) if value else None

    def device(self) -> str:
        device = self.get(DEVICE) or "auto"
        if device not in DEVICES and not _cuda_index(device):
            raise EnvError(f"{DEVICE}={device!r}: use auto, cpu, cuda or cuda:N")
        return device

    def log_format(self) -> str:
        value = self.get(LOG_FORMAT) or "json"
        if value not in LOG_FORMATS:
            raise EnvError(f"{LOG_FORMAT}={value!r}: use {' or '.join(LOG_FORMATS)}")
        return value


def _cuda_index(device: str) -> bool:
    head, _, index = device.partition(":")
    return head == "cuda" and index.isdigit()


def _write(pairs: Iterable[tuple[str, object]], leave_out: Collection[str]) -> dict[str, str]:
    """The variables to set: None, empty and `leave_out` ones are not written."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name in leave_out or value is None or value == "":
            continue
        out[name] = str(value)
    return out


# -- the trainer --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerEnv:
    """What a trainer is told by its environment. The model, the data shard and the
    hyper-parameters come from the aggregator's Join answer, so the job spec has one
    source of truth."""

    aggregator: str
    #: This trainer's tier key (flextrain.contract.credentials): its replica credential
    #: is made from it.
    tier_key: str
    job: str
    tier: str
    depth: int
    replica_index: int = 0
    data_dir: Path | None = None
    partition: str | None = None
    device: str = "auto"
    threads: int = 0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    slots_dir: Path | None = None
    slots: int = 0
    log_format: str = "json"
    #: The name the aggregator's certificate must carry (default: the host of `aggregator`).
    tls_server_name: str | None = None

    def to_env(self, *, leave_out: Collection[str] = ()) -> dict[str, str]:
        """The variables that configure this trainer. `leave_out`: what the pod gets
        otherwise (FLEXTRAIN_TIER_KEY from the job's Secret; FLEXTRAIN_REPLICA_INDEX,
        whose place JOB_COMPLETION_INDEX takes in an Indexed Job)."""
        slots = f"{self.slots_dir}:{self.slots}" if self.slots_dir is not None else None
        return _write(
            (
                (AGGREGATOR, self.aggregator),
                (TIER_KEY, self.tier_key),
                (JOB, self.job),
                (TIER, self.tier),
                (DEPTH, self.depth),
                (REPLICA_INDEX, self.replica_index),
                (PARTITION, self.partition),
                (DEVICE, self.device),
                (LOG_FORMAT, self.log_format),
                (DATA_DIR, self.data_dir),
                (THREADS, self.threads or None),
                (TLS_CA, self.tls_ca),
                (TLS_CERT, self.tls_cert),
                (TLS_KEY, self.tls_key),
                (TLS_SERVER_NAME, self.tls_server_name),
                (TRAINING_SLOTS, slots),
            ),
            leave_out,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerEnv:
        r = _Reader(env)
        address = r.need(AGGREGATOR)
        if ":" not in address:
            raise EnvError(f"{AGGREGATOR}={address!r} must be host:port")
        replica = r.get(REPLICA_INDEX) or r.get(COMPLETION_INDEX) or "0"
        slots_dir, slots = None, 0
        if raw := r.get(TRAINING_SLOTS):
            where, _, count = raw.rpartition(":")
            if not where:
                raise EnvError(f"{TRAINING_SLOTS}={raw!r} must be DIR:N")
            slots_dir, slots = Path(where), r.integer(TRAINING_SLOTS, 0, 1, count)
        return cls(
            aggregator=address,
            tier_key=r.need(TIER_KEY),
            job=r.need(JOB),
            tier=r.need(TIER),
            depth=r.integer(DEPTH, 0, 1, r.need(DEPTH)),
            replica_index=r.integer(REPLICA_INDEX, 0, 0, replica),
            data_dir=r.path(DATA_DIR),
            partition=r.get(PARTITION),
            device=r.device(),
            threads=r.integer(THREADS, 0, 0),
            tls_ca=r.path(TLS_CA),
            tls_cert=r.path(TLS_CERT),
            tls_key=r.path(TLS_KEY),
            tls_server_name=r.get(TLS_SERVER_NAME),
            slots_dir=slots_dir,
            slots=slots,
            log_format=r.log_format(),
        )


# -- the aggregator -----------------------------------------------------------------------


@dataclass(frozen=True)
class AggregatorEnv:
    """What an aggregator is told by its environment; each value also has a flag of
    `flextrain aggregator` (the flag wins)."""

    plan: str | None = None
    token: str | None = None
    port: int = DEFAULT_PORT
    metrics_port: int = 0
    checkpoint_dir: Path | None = None
    data_dir: Path | None = None
    device: str = "auto"
    threads: int = 0
    log_format: str = "json"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    push_idle_seconds: float | None = None
    push_grace_seconds: float | None = None
    push_min_bytes_per_second: float | None = None
    health_port: int = 0

    def to_env(self, *, leave_out: Collection[str] = ()) -> dict[str, str]:
        """The variables that configure this aggregator (`leave_out`: FLEXTRAIN_TOKEN
        when the pod reads it from the job's Secret)."""
        return _write(
            (
                (PLAN, self.plan),
                (TOKEN, self.token),
                (PORT, self.port),
                (METRICS_PORT, self.metrics_port),
                (HEALTH_PORT, self.health_port or None),
                (CHECKPOINT_DIR, self.checkpoint_dir),
                (DEVICE, self.device),
                (LOG_FORMAT, self.log_format),
                (DATA_DIR, self.data_dir),
                (THREADS, self.threads or None),
                (TLS_CERT, self.tls_cert),
                (TLS_KEY, self.tls_key),
                (TLS_CLIENT_CA, self.tls_client_ca),
                (PUSH_IDLE_SECONDS, self.push_idle_seconds),
                (PUSH_GRACE_SECONDS, self.push_grace_seconds),
                (PUSH_MIN_BYTES_PER_SECOND, self.push_min_bytes_per_second),
            ),
            leave_out,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AggregatorEnv:
        r = _Reader(env)
        return cls(
            plan=r.get(PLAN),
            token=r.get(TOKEN),
            port=r.port(PORT, DEFAULT_PORT, 0),
            metrics_port=r.port(METRICS_PORT, 0, 0),
            health_port=r.port(HEALTH_PORT, 0, 0),
            checkpoint_dir=r.path(CHECKPOINT_DIR),
            data_dir=r.path(DATA_DIR),
            device=r.device(),
            threads=r.integer(THREADS, 0, 0),
            log_format=r.log_format(),
            tls_cert=r.path(TLS_CERT),
            tls_key=r.path(TLS_KEY),
            tls_client_ca=r.path(TLS_CLIENT_CA),
            push_idle_seconds=r.positive(PUSH_IDLE_SECONDS),
            push_grace_seconds=r.positive(PUSH_GRACE_SECONDS),
            push_min_bytes_per_second=r.positive(PUSH_MIN_BYTES_PER_SECOND),
        )


# -- the docs -----------------------------------------------------------------------------

#: variable -> (required, meaning) of each process, in the order of the docs' tables.
TRAINER_VARIABLES: Final[dict[str, tuple[str, str]]] = {
    AGGREGATOR: ("yes", "host:port of the job's aggregator"),
    TIER_KEY: ("yes", "the tier's key, from which the trainer makes its replica credential (the operator: from the job's Secret)"),
    JOB: ("yes", "FlexTrainJob name"),
    TIER: ("yes", "tier name within the job"),
    DEPTH: ("yes", "blocks this tier trains (`auto` already resolved)"),
    REPLICA_INDEX: ("no", f"replica within the tier; default {COMPLETION_INDEX}, else 0"),
    DATA_DIR: ("for file datasets", "directory of the dataset files (mounted read-only)"),
    PARTITION: ("no", "expected partition, `iid` or `dirichlet:<alpha>`; checked against Join"),
    DEVICE: ("no", "auto (default: cuda when present), cpu, cuda or cuda:N"),
    THREADS: ("no", "torch CPU threads (default: torch's choice)"),
    LOG_FORMAT: ("no", "json (default) or text; `--log-format` wins"),
    TLS_CA: ("no", "CA certificate file: connect with TLS"),
    TLS_CERT: ("no", "client certificate for mutual TLS (with FLEXTRAIN_TLS_KEY)"),
    TLS_KEY: ("no", "the client certificate's key"),
    TLS_SERVER_NAME: ("no", "name the aggregator's certificate must carry (default: the host of FLEXTRAIN_AGGREGATOR)"),
    TRAINING_SLOTS: ("no", "`DIR:N`: at most N trainers of this machine train at once (`flextrain run`)"),
    MALLOC_RETAIN: ("no", "0: give freed memory back to the system (flextrain.allocator)"),
}
AGGREGATOR_VARIABLES: Final[dict[str, tuple[str, str]]] = {
    PLAN: ("--plan FILE", "the job and its resolved tier depths (JSON text)"),
    TOKEN: ("--token-file FILE", "the job token: authenticates GetStatus, and every replica credential is derived from it"),
    PORT: ("--port", f"gRPC port (default {DEFAULT_PORT}; 0: any free port)"),
    METRICS_PORT: ("--metrics-port", "Prometheus /metrics port (0: off)"),
    HEALTH_PORT: ("--health-port", "plaintext port serving only the gRPC health service, for probes that cannot speak TLS (0: off)"),
    CHECKPOINT_DIR: ("--checkpoint-dir", "round checkpoints; resumes from the newest"),
    DATA_DIR: ("--data-dir", "dataset directory for held-out evaluation"),
    DEVICE: ("--device", "evaluation device: auto, cpu, cuda or cuda:N"),
    THREADS: ("--threads", "torch threads for evaluation (0: torch's default)"),
    LOG_FORMAT: ("--log-format", "json (default) or text"),
    TLS_CERT: ("--tls-cert", "serving certificate: TLS (with FLEXTRAIN_TLS_KEY)"),
    TLS_KEY: ("--tls-key", "the serving certificate's key"),
    TLS_CLIENT_CA: ("--tls-client-ca", "CA of client certificates: mutual TLS"),
    PUSH_IDLE_SECONDS: ("--push-idle-seconds", "longest wait for a push's header and each of its chunks (default 10)"),
    PUSH_GRACE_SECONDS: ("--push-grace-seconds", "waiting a push may spend beyond its bytes at the minimum rate (default 10)"),
    PUSH_MIN_BYTES_PER_SECOND: ("--push-min-bytes-per-second", "slowest push taken (default 262144: 256 KiB/s)"),
    MALLOC_RETAIN: ("", "0: give freed memory back to the system (flextrain.allocator)"),
}


def markdown_table(process: str) -> str:
    """The docs' table of `process` ("trainer" or "aggregator")."""
    if process == "trainer":
        head, rows = "| variable | required | meaning |", TRAINER_VARIABLES
    elif process == "aggregator":
        head, rows = "| variable | flag | meaning |", AGGREGATOR_VARIABLES
    else:
        raise ValueError(f"no environment table for {process!r}: trainer or aggregator")
    lines = [head, "|---|---|---|"]
    lines += [f"| `{name}` | {other} | {meaning} |" for name, (other, meaning) in rows.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m flextrain.contract.env: the docs' tables
    for process in ("trainer", "aggregator"):
        print(f"<!-- env:{process} -->\n{markdown_table(process)}<!-- /env:{process} -->\n")
