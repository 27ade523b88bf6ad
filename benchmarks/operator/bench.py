"""How fast the operator turns FlexTrainJobs into children, how much API traffic its
status reporting costs, and how much memory it takes.

Two backends: `real` (benchmarks/operator/real.py: a real kube-apiserver with its
controller manager and scheduler, the chart installed with helm) and `emulator` (this
module), which is quicker and good for comparisons.

Emulator setup per scenario: the Kubernetes emulator of the test suite
(tests/integration/kube_emulator.py) serves HTTP on 127.0.0.1 in this process; the
operator runs as a separate process, `python -m flextrain operator -A` with its default
settings (status every 10 s), logged in through a kubeconfig. Two DeviceTiers with one
Ready node each; every job has two tiers (1 + 2 replicas), i.e. 8 children (Secret, Service, NetworkPolicy, checkpoint claim, PodDisruptionBudget, Deployment, 2 Jobs).

Measured:
1. creation: N FlexTrainJobs created at once; per job, the time from its creation to its
   last child's creation (Secret, Service, Deployment, 2 Jobs), read from the
   emulator's creation clock; API requests the operator made meanwhile.
2. steady state: `settle` seconds with nothing changing; status PATCHes and all
   operator requests in that window.
3. controller step: every aggregator becomes available and every trainer ready (as the
   Deployment/Job controllers would report); time until every job shows Running, and
   the status PATCHes that took.
4. the operator process's resident memory (VmRSS) before the jobs, after, and its peak
   (VmHWM); its CPU time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

from benchmarks.operator.common import (
    children_of,
    cpu_seconds,
    job_body,
    job_name,
    proc_status,
    summary,
)
from tests.factories import make_tier
from tests.integration.operator_harness import (
    DEPLOYMENTS,
    FTJ,
    JOBS,
    NS,
    Cluster,
    emulated_cluster,
    node,
)

REPO = Path(__file__).resolve().parents[2]
RESOURCES = {
    "Secret": "v1/secrets",
    "Service": "v1/services",
    "NetworkPolicy": "networking.k8s.io/v1/networkpolicies",
    "PersistentVolumeClaim": "v1/persistentvolumeclaims",
    "PodDisruptionBudget": "policy/v1/poddisruptionbudgets",
    "Deployment": DEPLOYMENTS,
    "Job": JOBS,
}


def _operator_requests(cluster: Cluster, since: int) -> list[Any]:
    reqs = list(cluster.api._requests)[since:]
    return [r for r in reqs if _agent(r).startswith(("kopf/", "flextrain-operator/"))]


def _agent(req: Any) -> str:
    headers = {k.lower(): v for k, v in dict(req.headers).items()}
    return str(headers.get("user-agent", ""))


def _is_status_patch(req: Any) -> bool:
    return (
        str(req.method).upper().endswith("PATCH")
        and str(req.url.path).endswith("/status")
        and "/flextrainjobs/" in str(req.url.path)
    )


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


async def scenario(jobs: int, *, settle: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        async with emulated_cluster(Path(tmp)) as cluster:
            await cluster.create(node("cpu-1", {"flextrain.dev/pool": "cpu"}))
            await cluster.create(node("gpu-1", {"flextrain.dev/pool": "gpu"}))
            await cluster.create(make_tier("cpu"))
            await cluster.create(make_tier("gpu"))
            log = Path(tmp) / "operator.log"
            env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXTRAIN_")}
            env["KUBECONFIG"] = str(cluster.kubeconfig)
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "flextrain",
                        "operator",
                        "-A",
                        "--liveness",
                        "",
                        "--log-format",
                        "json",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                return await _measure(cluster, proc, jobs, settle, log)
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout=20)
                    except TimeoutError:
                        proc.kill()
                        proc.wait(timeout=10)


async def _measure(
    cluster: Cluster, proc: subprocess.Popen[bytes], jobs: int, settle: float, log: Path
) -> dict[str, Any]:
    ftj = kmock.resource(FTJ)

    def watching() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{log.read_text()[-3000:]}")
        return any(
            r.params.get("watch") == "true" and r.resource == ftj
            for r in list(cluster.api._requests)
        )

    await _wait(watching, 60, "the operator to watch FlexTrainJobs")
    await asyncio.sleep(1.0)  # let the initial listings settle
    rss_idle = proc_status(proc.pid).get("VmRSS", 0)
    cpu_start = cpu_seconds(proc.pid)

    # 1. creation
    mark = len(cluster.api._requests)
    bodies = [job_body(i) for i in range(jobs)]
    started = time.monotonic()
    await asyncio.gather(*(cluster.create(b) for b in bodies))
    created = cluster.api.created_at

    def child_times(i: int) -> list[float] | None:
        keys = [
            (kmock.resource(RESOURCES[kind]), NS, child) for kind, child in children_of(job_name(i))
        ]
        times = [created.get(k) for k in keys]
        return None if any(t is None for t in times) else [t for t in times if t is not None]

    await _wait(lambda: all(child_times(i) for i in range(jobs)), 300, "every job's children")
    all_done = time.monotonic()
    latencies = []
    for i in range(jobs):
        job_created = created[(ftj, NS, job_name(i))]
        latencies.append(max(child_times(i) or [0.0]) - job_created)
    creation_reqs = _operator_requests(cluster, mark)
    await _wait(
        lambda: all(cluster.status(job_name(i)).get("tiers") for i in range(jobs)),
        60,
        "every job's first status",
    )
    rss_jobs = proc_status(proc.pid).get("VmRSS", 0)

    # 2. steady state
    await asyncio.sleep(2.0)
    mark = len(cluster.api._requests)
    await asyncio.sleep(settle)
    steady = _operator_requests(cluster, mark)

    # 3. controller step: aggregators available, trainers ready -> Running
    mark = len(cluster.api._requests)
    step_start = time.monotonic()
    for i in range(jobs):
        name = job_name(i)
        await cluster.set_status(DEPLOYMENTS, NS, f"{name}-aggregator", {"availableReplicas": 1})
        await cluster.set_status(JOBS, NS, f"{name}-gpu", {"active": 1, "ready": 1})
        await cluster.set_status(JOBS, NS, f"{name}-cpu", {"active": 2, "ready": 2})
    await _wait(
        lambda: all(cluster.status(job_name(i)).get("phase") == "Running" for i in range(jobs)),
        120,
        "every job Running",
    )
    running_after = time.monotonic() - step_start
    await asyncio.sleep(1.0)
    step = _operator_requests(cluster, mark)
    mem = proc_status(proc.pid)
    return {
        "backend": "emulator",
        "jobs": jobs,
        "children_seconds": summary(latencies),
        "all_children_seconds": all_done - started,
        "creation_requests_per_job": len(creation_reqs) / jobs,
        "steady_window_seconds": settle,
        "steady_status_patches_per_job": sum(map(_is_status_patch, steady)) / jobs,
        "steady_requests_per_job_per_minute": len(steady) / jobs * 60 / settle,
        "running_seconds": running_after,
        "step_status_patches_per_job": sum(map(_is_status_patch, step)) / jobs,
        "rss_idle_mib": rss_idle / 1024,
        "rss_with_jobs_mib": mem.get("VmRSS", rss_jobs) / 1024,
        "rss_peak_mib": mem.get("VmHWM", 0) / 1024,
        "operator_cpu_seconds": cpu_seconds(proc.pid) - cpu_start,
    }


def run_all(
    counts: list[int],
    *,
    settle: float,
    repeat: int = 1,
    backend: str = "real",
    keep: Path | None = None,
) -> list[dict[str, Any]]:
    """Each scenario `repeat` times; the table shows the run with the median p50 latency
    (the others are in `runs`)."""
    results = []
    for n in counts:
        runs = []
        for k in range(repeat):
            load = os.getloadavg()[0]
            began = time.monotonic()
            if backend == "real":
                from benchmarks.operator import real

                where = keep / f"{n}-jobs-{k + 1}" if keep else None
                run = real.scenario(n, settle=settle, keep=where)
            else:
                run = asyncio.run(scenario(n, settle=settle))
                run["wall_seconds"] = time.monotonic() - began
            run["load_average_before"] = load
            run["load_average_after"] = os.getloadavg()[0]
            run["targets"] = targets(run)
            runs.append(run)
        runs.sort(key=lambda r: r["children_seconds"]["p50"])
        results.append({**runs[len(runs) // 2], "runs": runs})
    return results


#: The issue's targets by number of jobs: creation -> all children p50 (s), RSS (MB).
LATENCY_TARGET = {50: 0.5, 500: 1.0}
RSS_TARGET_MB = {50: 150, 500: 250}


def _mb(mib: float) -> float:
    return mib * 1024 * 1024 / 1e6


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target next to the quantity it names: [{target, measured, met}]."""
    n, out = r["jobs"], []
    if n in LATENCY_TARGET:
        p50 = r["children_seconds"]["p50"]
        out.append(
            {
                "target": f"creation -> all children p50 < {LATENCY_TARGET[n]:g} s at {n} jobs",
                "measured": f"{p50:.3f} s",
                "met": p50 < LATENCY_TARGET[n],
            }
        )
    if n in RSS_TARGET_MB:
        limit = RSS_TARGET_MB[n]
        steady = r.get("rss_steady_mib", r["rss_with_jobs_mib"])
        for what, mib in (("peak (VmHWM)", r["rss_peak_mib"]), ("steady (VmRSS)", steady)):
            out.append(
                {
                    "target": f"operator RSS {what} < {limit} MB at {n} jobs",
                    "measured": f"{_mb(mib):.1f} MB ({mib:.1f} MiB)",
                    "met": _mb(mib) < limit,
                }
            )
    key = "steady_job_requests_per_job_per_minute"
    if key not in r:  # the emulator does not tell requests apart by job
        key = "steady_requests_per_job_per_minute"
    out.append(
        {
            "target": "no API request per job in steady state",
            "measured": f"{r[key]:.3f} per job per minute",
            "met": r[key] == 0,
        }
    )
    return out


def _get(r: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def _f(fmt: str, *path: str) -> Any:
    def show(r: dict[str, Any]) -> str:
        value = _get(r, *path)
        return "-" if value is None else format(value, fmt)

    return show


def print_table(results: list[dict[str, Any]]) -> None:
    rows = [
        ("backend", _f("", "backend")),
        ("jobs created at once", _f("", "jobs")),
        ("creation -> all 8 children, p50 (s)", _f(".3f", "children_seconds", "p50")),
        ("  p95 (s)", _f(".3f", "children_seconds", "p95")),
        ("  max (s)", _f(".3f", "children_seconds", "max")),
        ("every job's children exist after (s)", _f(".3f", "all_children_seconds")),
        ("creation -> all 3 pods scheduled, p50 (s)", _f(".3f", "scheduled_seconds", "p50")),
        ("  p95 (s)", _f(".3f", "scheduled_seconds", "p95")),
        ("  max (s)", _f(".3f", "scheduled_seconds", "max")),
        ("creation -> all 4 pods Ready, p50 (s)", _f(".3f", "ready_seconds", "p50")),
        ("  p95 (s)", _f(".3f", "ready_seconds", "p95")),
        ("creation -> phase Running, p50 (s)", _f(".3f", "running_seconds_from_creation", "p50")),
        ("  p95 (s)", _f(".3f", "running_seconds_from_creation", "p95")),
        (
            "all pods Ready -> phase Running, p50 (s)",
            _f(".3f", "running_after_ready_seconds", "p50"),
        ),
        ("  p95 (s)", _f(".3f", "running_after_ready_seconds", "p95")),
        (
            "  of it: Deployment+Jobs report them, p50",
            _f(".3f", "reported_after_ready_seconds", "p50"),
        ),
        ("    p95 (s)", _f(".3f", "reported_after_ready_seconds", "p95")),
        (
            "  then operator shows Running, p50 (s)",
            _f(".3f", "running_after_reported_seconds", "p50"),
        ),
        ("    p95 (s)", _f(".3f", "running_after_reported_seconds", "p95")),
        ("API requests per job while creating", _f(".1f", "creation_requests_per_job")),
        ("  of them naming the job or its children", _f(".1f", "creation_job_requests_per_job")),
        ("status PATCHes per job, steady state", _f(".2f", "steady_status_patches_per_job")),
        (
            "API requests per job per minute, steady",
            _f(".3f", "steady_requests_per_job_per_minute"),
        ),
        ("  naming a job or its children", _f(".3f", "steady_job_requests_per_job_per_minute")),
        ("steady window (s)", _f(".0f", "steady_window_seconds")),
        ("controllers report ready -> Running (s)", _f(".3f", "running_seconds")),
        ("status PATCHes per job for that step", _f(".2f", "step_status_patches_per_job")),
        ("operator RSS idle (MiB)", _f(".1f", "rss_idle_mib")),
        ("operator RSS steady (MiB)", _f(".1f", "rss_steady_mib")),
        ("operator RSS with the jobs, end (MiB)", _f(".1f", "rss_with_jobs_mib")),
        ("operator RSS peak (MiB)", _f(".1f", "rss_peak_mib")),
        ("operator CPU time for the run (s)", _f(".2f", "operator_cpu_seconds")),
        ("operator CPU s per minute, steady", _f(".2f", "operator_cpu_steady_per_minute")),
        ("wall time of the scenario (s)", _f(".0f", "wall_seconds")),
    ]
    shown = [(label, fmt) for label, fmt in rows if any(fmt(r) != "-" for r in results)]
    width = max(len(label) for label, _ in shown)
    print(f"{'':{width}} | " + " | ".join(f"{'run ' + str(i + 1):>9}" for i in range(len(results))))
    for label, fmt in shown:
        print(f"{label:{width}} | " + " | ".join(f"{fmt(r):>9}" for r in results))
    for r in results:
        for what, values in (r.get("breakdown_seconds") or {}).items():
            print(
                f"{r['jobs']} jobs, create returned -> {what}: p50 {values['p50']:.3f} s, "
                f"p95 {values['p95']:.3f} s, max {values['max']:.3f} s"
                if not what.startswith("API server")
                else f"{r['jobs']} jobs, {what}: p50 {values['p50']:.3f} s, p95 {values['p95']:.3f} s"
            )
        if "creation_requests_by_kind" in r:
            print(
                f"\n{r['jobs']} jobs, operator requests while creating (all jobs): {r['creation_requests_by_kind']}"
            )
            print(
                f"{r['jobs']} jobs, operator requests in the steady window: {r['steady_requests_by_kind'] or 'none'}"
            )
    print("\ntargets:")
    for r in results:
        for t in r["targets"]:
            verdict = "met" if t["met"] else "NOT met"
            print(f"  [{r['backend']}] {t['target']}: {t['measured']} -> {verdict}")
