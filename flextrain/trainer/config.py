"""The trainer's environment contract: what the operator (and `flextrain run`) sets in
every trainer pod / process. Everything else (model, data shard, hyper-parameters)
comes from the aggregator's Join answer, so the job spec has one source of truth.

| variable | required | meaning |
|---|---|---|
| FLEXTRAIN_AGGREGATOR | yes | host:port of the job's aggregator |
| FLEXTRAIN_TOKEN | yes | the per-job token (from the job's Secret) |
| FLEXTRAIN_JOB | yes | FlexTrainJob name |
| FLEXTRAIN_TIER | yes | tier name within the job |
| FLEXTRAIN_DEPTH | yes | residual blocks this tier trains (auto already resolved) |
| FLEXTRAIN_REPLICA_INDEX | no | replica within the tier; default JOB_COMPLETION_INDEX, else 0 |
| FLEXTRAIN_DATA_DIR | for file datasets | directory of the dataset files (mounted read-only) |
| FLEXTRAIN_PARTITION | no | expected partition, e.g. `iid` or `dirichlet:0.5`; checked against Join |
| FLEXTRAIN_DEVICE | no | auto (default: cuda when present), cpu or cuda |
| FLEXTRAIN_THREADS | no | torch CPU threads (default: torch's choice) |
| FLEXTRAIN_TLS_CA | no | CA certificate file: connect with TLS |
| FLEXTRAIN_TLS_CERT / _KEY | no | client certificate for mutual TLS |
| FLEXTRAIN_TRAINING_SLOTS | no | `DIR:N`: at most N trainers of this machine train at once (`flextrain run`) |
| FLEXTRAIN_MALLOC_RETAIN | no | 0: give freed memory back to the system (see flextrain.allocator) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """The environment contract is not met; the message names the variable."""


@dataclass(frozen=True)
class TrainerConfig:
    aggregator: str
    token: str
    job: str
    tier: str
    depth: int
    replica_index: int
    data_dir: Path | None = None
    partition: str | None = None
    device: str = "auto"
    threads: int = 0
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    slots_dir: Path | None = None
    slots: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerConfig:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def need(name: str) -> str:
            value = get(name)
            if value is None:
                raise ConfigError(f"{name} is not set")
            return value

        def integer(name: str, value: str, low: int) -> int:
            try:
                number = int(value)
            except ValueError:
                raise ConfigError(f"{name}={value!r} is not an integer") from None
            if number < low:
                raise ConfigError(f"{name}={number} must be >= {low}")
            return number

        replica = get("FLEXTRAIN_REPLICA_INDEX") or get("JOB_COMPLETION_INDEX") or "0"
        device = get("FLEXTRAIN_DEVICE") or "auto"
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError(f"FLEXTRAIN_DEVICE={device!r}: use auto, cpu, cuda or cuda:N")
        address = need("FLEXTRAIN_AGGREGATOR")
        if ":" not in address:
            raise ConfigError(f"FLEXTRAIN_AGGREGATOR={address!r} must be host:port")
        def path(name: str) -> Path | None:
            value = get(name)
            return Path(value) if value else None

        slots_dir, slots = None, 0
        if raw := get("FLEXTRAIN_TRAINING_SLOTS"):
            where, _, count = raw.rpartition(":")
            if not where:
                raise ConfigError(f"FLEXTRAIN_TRAINING_SLOTS={raw!r} must be DIR:N")
            slots_dir, slots = Path(where), integer("FLEXTRAIN_TRAINING_SLOTS", count, 1)
        return cls(
            slots_dir=slots_dir,
            slots=slots,
            aggregator=address,
            token=need("FLEXTRAIN_TOKEN"),
            job=need("FLEXTRAIN_JOB"),
            tier=need("FLEXTRAIN_TIER"),
            depth=integer("FLEXTRAIN_DEPTH", need("FLEXTRAIN_DEPTH"), 1),
            replica_index=integer("FLEXTRAIN_REPLICA_INDEX", replica, 0),
            data_dir=path("FLEXTRAIN_DATA_DIR"),
            partition=get("FLEXTRAIN_PARTITION"),
            device=device,
            threads=integer("FLEXTRAIN_THREADS", get("FLEXTRAIN_THREADS") or "0", 0),
            tls_ca=path("FLEXTRAIN_TLS_CA"),
            tls_cert=path("FLEXTRAIN_TLS_CERT"),
            tls_key=path("FLEXTRAIN_TLS_KEY"),
        )


def partition_label(scheme: str, alpha: float | None) -> str:
    """The FLEXTRAIN_PARTITION form of a partition: `iid` or `dirichlet:<alpha>`."""
    return scheme if scheme == "iid" else f"{scheme}:{alpha:g}"
