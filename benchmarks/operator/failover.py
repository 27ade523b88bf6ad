"""python -m benchmarks.operator.failover [--rounds 3] [--keep DIR]
[--out benchmarks/out/operator-failover.json]

Leader failover of the operator on a real control plane, set up as the operator
benchmark's real backend does (benchmarks/operator/real.py: kube-apiserver, controller
manager and scheduler v1.37.2, node pools kept Ready by the node agent, `helm install` of
charts/flextrain, DeviceTiers `gpu` and `cpu`). Two `flextrain operator` processes run
with the chart's environment (leader election: Lease 15 s, renew deadline 10 s, retry
2 s), each with its own ServiceAccount token.

Each round, from a leader and a standby, once per way of stopping the leader:
- SIGKILL (a crash, a node lost): the leader is killed, and a FlexTrainJob is created
  right after the kill;
- SIGTERM (a rolling update, a drain): the leader stops gracefully and releases the
  Lease; a job is created right after the signal.
Measured from the signal (monotonic clock, polling every 50 ms): the Lease held by the
standby, the new job's first child (its token Secret: the new leader's first reconcile
write) and all 8 of its children. Checked: the children of a job made before the stop
are the same objects afterwards (none duplicated or recreated). A new standby is then
started, so every round begins from a leader and a standby.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from benchmarks.operator.common import NS, children_of, job_body, job_name
from benchmarks.operator.real import Cluster, real_cluster
from tests.cluster import install

LEASE = f"{install.RELEASE}-flextrain-leader"
POLL = 0.05


def _reader(api: client.ApiClient, kind: str) -> Callable[[str], Any]:
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    net, policy = client.NetworkingV1Api(api), client.PolicyV1Api(api)
    return {
        "Secret": lambda n: core.read_namespaced_secret(n, NS),
        "Service": lambda n: core.read_namespaced_service(n, NS),
        "PersistentVolumeClaim": lambda n: core.read_namespaced_persistent_volume_claim(n, NS),
        "NetworkPolicy": lambda n: net.read_namespaced_network_policy(n, NS),
        "PodDisruptionBudget": lambda n: policy.read_namespaced_pod_disruption_budget(n, NS),
        "Deployment": lambda n: apps.read_namespaced_deployment(n, NS),
        "Job": lambda n: batch.read_namespaced_job(n, NS),
    }[kind]


def child_uids(api: client.ApiClient, job: str) -> dict[tuple[str, str], str | None]:
    """(kind, name) -> uid of each of the job's 8 children (None: missing)."""
    out: dict[tuple[str, str], str | None] = {}
    for kind, name in children_of(job):
        try:
            out[(kind, name)] = _reader(api, kind)(name).metadata.uid
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            out[(kind, name)] = None
    return out


def _exists(read: Callable[[str], Any], name: str) -> bool:
    try:
        read(name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        return False
    return True


def holder(api: client.ApiClient) -> str:
    lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, install.NAMESPACE)
    return str(lease.spec.holder_identity or "")


def until(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll until `predicate` is truthy; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(POLL)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Operators:
    """Operator processes of the chart's release, each with its own token."""

    def __init__(self, cluster: Cluster, work: Path) -> None:
        self.cluster, self.work = cluster, work
        self.env = {
            **install.chart_operator_env(cluster.api),
            "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": f"dns://{cluster.dns}/{{service}}.{{namespace}}.svc:{{port}}",
        }
        self.procs: list[install.OperatorProcess] = []

    def start(self) -> install.OperatorProcess:
        label = f"operator-{len(self.procs)}"
        kubeconfig = install.token_kubeconfig(
            self.cluster.api, self.cluster.plane, f"{install.RELEASE}-flextrain", install.NAMESPACE,
            self.work / f"{label}.kubeconfig",
        )
        env = {**self.env, "FLEXTRAIN_OPERATOR_SELF_METRICS_PORT": str(install.free_port())}
        proc = install.OperatorProcess(kubeconfig, env, self.work / f"{label}.log").start()
        proc.wait_live(timeout=90)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop()


def one_stop(api: client.ApiClient, leader: install.OperatorProcess, how: str, n: int) -> dict[str, Any]:
    """Stop the leader `how` (SIGKILL or SIGTERM) with a standby running; the timings."""
    before = job_name(n)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "flextrain.dev", "v1alpha1", NS, "flextrainjobs", job_body(n)
    )
    until(lambda: all(child_uids(api, before).values()), 60, f"the children of {before}")
    made = child_uids(api, before)
    old = holder(api)
    after = job_name(n + 1)
    began = time.monotonic()
    if how == "SIGKILL":
        leader.kill()
    else:
        assert leader.proc is not None
        leader.proc.send_signal(signal.SIGTERM)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "flextrain.dev", "v1alpha1", NS, "flextrainjobs", job_body(n + 1)
    )
    lease_at = until(lambda: holder(api) not in ("", old), 60, "the standby taking the Lease")
    secret = _reader(api, "Secret")
    first_at = until(lambda: _exists(secret, children_of(after)[0][1]), 60, f"{after}'s first child")
    all_at = until(lambda: all(child_uids(api, after).values()), 60, f"all children of {after}")
    if how == "SIGTERM":
        assert leader.proc is not None
        code = leader.proc.wait(30)
        assert code == 0, f"the stopped leader exited {code}"
    time.sleep(2)
    assert child_uids(api, before) == made, f"children of {before} changed across the failover"
    return {
        "how": how,
        "lease_taken_s": round(lease_at - began, 2),
        "first_child_s": round(first_at - began, 2),
        "all_children_s": round(all_at - began, 2),
    }


def run(rounds: int, keep: Path | None) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="operator-failover-")))
        else:
            work = keep
            work.mkdir(parents=True, exist_ok=True)
        cluster = stack.enter_context(real_cluster(work, 2 * 2 * rounds))
        ops = Operators(cluster, work)
        stack.callback(ops.stop_all)
        leader = ops.start()
        leader.wait_leader(timeout=60)
        standby = ops.start()
        n = 0
        for r in range(rounds):
            for how in ("SIGKILL", "SIGTERM"):
                result = one_stop(cluster.api, leader, how, n)
                n += 2
                result["round"] = r + 1
                print(json.dumps(result), flush=True)
                results.append(result)
                standby.wait_leader(timeout=30)
                leader, standby = standby, ops.start()
        denials = [line for proc in ops.procs for line in proc.forbidden()]
    summary = {
        how: {
            key: {
                "median": statistics.median(r[key] for r in results if r["how"] == how),
                "min": min(r[key] for r in results if r["how"] == how),
                "max": max(r[key] for r in results if r["how"] == how),
            }
            for key in ("lease_taken_s", "first_child_s", "all_children_s")
        }
        for how in ("SIGKILL", "SIGTERM")
    }
    return {"rounds": results, "summary": summary, "rbac_denials": len(denials),
            "setup_seconds": cluster.setup_seconds}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.operator.failover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of one SIGKILL and one SIGTERM (default 3)")
    p.add_argument("--keep", type=Path, default=None, help="keep the logs (operators, control plane, audit) here")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/operator-failover.json"))
    args = p.parse_args()
    result = run(args.rounds, args.keep)
    print(f"\n{'stop':8} {'':>16} {'median':>8} {'min':>8} {'max':>8}")
    for how, keys in result["summary"].items():
        for key, stats in keys.items():
            label = {"lease_taken_s": "Lease taken", "first_child_s": "first child",
                     "all_children_s": "all 8 children"}[key]
            print(f"{how:8} {label:>16} {stats['median']:7.1f}s {stats['min']:7.1f}s {stats['max']:7.1f}s")
    print(f"RBAC denials: {result['rbac_denials']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
