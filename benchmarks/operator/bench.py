"""How fast the operator turns FlexTrainJobs into children, how much API traffic its
status reporting costs, and how much memory it takes.

Setup per scenario: the Kubernetes emulator of the test suite
(tests/integration/kube_emulator.py) serves HTTP on 127.0.0.1 in this process; the
operator runs as a separate process, `python -m flextrain operator -A` with its default
settings (status every 10 s), logged in through a kubeconfig. Two DeviceTiers with one
Ready node each; every job has two tiers (1 + 2 replicas), i.e. 5 children.

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
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kmock

from tests.factories import make_job, make_tier
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
CHILDREN = ("v1/secrets", "v1/services", DEPLOYMENTS, JOBS)


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


async def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _job_name(i: int) -> str:
    return f"bench-{i:03d}"


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
    rss_idle = _proc_status(proc.pid).get("VmRSS", 0)
    cpu_start = _cpu_seconds(proc.pid)

    # 1. creation
    mark = len(cluster.api._requests)
    bodies = [
        make_job(
            _job_name(i),
            tiers=[
                {"name": "gpu", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
                {"name": "cpu", "deviceTierRef": "cpu", "replicas": 2, "depth": 3},
            ],
        )
        for i in range(jobs)
    ]
    started = time.monotonic()
    await asyncio.gather(*(cluster.create(b) for b in bodies))
    created = cluster.api.created_at

    def child_times(i: int) -> list[float] | None:
        name = _job_name(i)
        keys = [
            (kmock.resource("v1/secrets"), NS, f"{name}-token"),
            (kmock.resource("v1/services"), NS, f"{name}-aggregator"),
            (kmock.resource(DEPLOYMENTS), NS, f"{name}-aggregator"),
            (kmock.resource(JOBS), NS, f"{name}-gpu"),
            (kmock.resource(JOBS), NS, f"{name}-cpu"),
        ]
        times = [created.get(k) for k in keys]
        return None if any(t is None for t in times) else [t for t in times if t is not None]

    await _wait(lambda: all(child_times(i) for i in range(jobs)), 300, "every job's children")
    all_done = time.monotonic()
    latencies = []
    for i in range(jobs):
        job_created = created[(ftj, NS, _job_name(i))]
        latencies.append(max(child_times(i) or [0.0]) - job_created)
    creation_reqs = _operator_requests(cluster, mark)
    await _wait(
        lambda: all(cluster.status(_job_name(i)).get("tiers") for i in range(jobs)),
        60,
        "every job's first status",
    )
    rss_jobs = _proc_status(proc.pid).get("VmRSS", 0)

    # 2. steady state
    await asyncio.sleep(2.0)
    mark = len(cluster.api._requests)
    await asyncio.sleep(settle)
    steady = _operator_requests(cluster, mark)

    # 3. controller step: aggregators available, trainers ready -> Running
    mark = len(cluster.api._requests)
    step_start = time.monotonic()
    for i in range(jobs):
        name = _job_name(i)
        await cluster.set_status(DEPLOYMENTS, NS, f"{name}-aggregator", {"availableReplicas": 1})
        await cluster.set_status(JOBS, NS, f"{name}-gpu", {"active": 1, "ready": 1})
        await cluster.set_status(JOBS, NS, f"{name}-cpu", {"active": 2, "ready": 2})
    await _wait(
        lambda: all(cluster.status(_job_name(i)).get("phase") == "Running" for i in range(jobs)),
        120,
        "every job Running",
    )
    running_after = time.monotonic() - step_start
    await asyncio.sleep(1.0)
    step = _operator_requests(cluster, mark)
    mem = _proc_status(proc.pid)
    return {
        "jobs": jobs,
        "children_seconds": _summary(latencies),
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
        "operator_cpu_seconds": _cpu_seconds(proc.pid) - cpu_start,
    }


async def run_all(counts: list[int], *, settle: float, repeat: int = 1) -> list[dict[str, Any]]:
    """Each scenario `repeat` times; the table shows the run with the median p50 latency
    (the others are in `runs`)."""
    results = []
    for n in counts:
        runs = []
        for _ in range(repeat):
            load = os.getloadavg()[0]
            run = await scenario(n, settle=settle)
            run["load_average_before"] = load
            runs.append(run)
        runs.sort(key=lambda r: r["children_seconds"]["p50"])
        results.append({**runs[len(runs) // 2], "runs": runs})
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    rows = [
        ("jobs created at once", lambda r: f"{r['jobs']}"),
        ("creation -> all 5 children, p50 (s)", lambda r: f"{r['children_seconds']['p50']:.3f}"),
        ("  p95 (s)", lambda r: f"{r['children_seconds']['p95']:.3f}"),
        ("  max (s)", lambda r: f"{r['children_seconds']['max']:.3f}"),
        ("every job's children exist after (s)", lambda r: f"{r['all_children_seconds']:.3f}"),
        ("API requests per job while creating", lambda r: f"{r['creation_requests_per_job']:.1f}"),
        (
            "status PATCHes per job, steady state",
            lambda r: f"{r['steady_status_patches_per_job']:.2f}",
        ),
        (
            "API requests per job per minute, steady",
            lambda r: f"{r['steady_requests_per_job_per_minute']:.2f}",
        ),
        ("controllers report ready -> Running (s)", lambda r: f"{r['running_seconds']:.3f}"),
        (
            "status PATCHes per job for that step",
            lambda r: f"{r['step_status_patches_per_job']:.2f}",
        ),
        ("operator RSS idle (MiB)", lambda r: f"{r['rss_idle_mib']:.1f}"),
        ("operator RSS with the jobs (MiB)", lambda r: f"{r['rss_with_jobs_mib']:.1f}"),
        ("operator RSS peak (MiB)", lambda r: f"{r['rss_peak_mib']:.1f}"),
        ("operator CPU time for the run (s)", lambda r: f"{r['operator_cpu_seconds']:.2f}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}} | " + " | ".join(f"{'run ' + str(i + 1):>9}" for i in range(len(results))))
    for label, fmt in rows:
        print(f"{label:{width}} | " + " | ".join(f"{fmt(r):>9}" for r in results))
