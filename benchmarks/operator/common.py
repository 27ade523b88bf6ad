"""What both backends of the operator benchmark share: the jobs, their children, the
operator process's memory and CPU time, summaries."""

from __future__ import annotations

import contextlib
import os
import statistics
from pathlib import Path
from typing import Any

from flextrain.operator import names
from tests.factories import make_job

NS = "default"
#: Every job's tiers: 1 trainer on DeviceTier gpu, 2 on DeviceTier cpu (3 trainer pods).
TIERS: tuple[dict[str, Any], ...] = (
    {"name": "gpu", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
    {"name": "cpu", "deviceTierRef": "cpu", "replicas": 2, "depth": 3},
)
#: The children's kinds and where (namespace NS) the real backend watches them.
CHILD_KINDS = {
    "Secret": f"/api/v1/namespaces/{NS}/secrets",
    "Service": f"/api/v1/namespaces/{NS}/services",
    "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
    "PersistentVolumeClaim": f"/api/v1/namespaces/{NS}/persistentvolumeclaims",
    "PodDisruptionBudget": f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets",
    "Deployment": f"/apis/apps/v1/namespaces/{NS}/deployments",
    "Job": f"/apis/batch/v1/namespaces/{NS}/jobs",
}


def job_name(i: int) -> str:
    return f"bench-{i:03d}"


def job_body(i: int) -> dict[str, Any]:
    return make_job(job_name(i), tiers=[dict(t) for t in TIERS])


def children_of(job: str) -> list[tuple[str, str]]:
    """(kind, name) of the 8 children a job gets: Secret, Service, NetworkPolicy, checkpoint
    claim, PodDisruptionBudget, Deployment, 2 Jobs."""
    return [
        ("Secret", names.secret_name(job)),
        ("Service", names.aggregator_name(job)),
        ("NetworkPolicy", names.aggregator_name(job)),
        ("PersistentVolumeClaim", names.checkpoint_claim_name(job)),
        ("PodDisruptionBudget", names.aggregator_name(job)),
        ("Deployment", names.aggregator_name(job)),
        *(("Job", names.tier_job_name(job, t["name"])) for t in TIERS),
    ]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }
