"""Leader election on the real API server (flextrain/operator/leader.py, docs/operator.md
"Several replicas").

First the election itself, with the chart's ServiceAccount: two electors racing for a new
Lease, 409 Conflict on a stale resourceVersion, expiry by the standby's own clock (a
controllable clock, so nothing waits 15 s), release, and a leader cut off from the API
server giving up at its renew deadline.

Then `flextrain operator` as two processes with the chart's environment (leader election
on, 15 s / 10 s / 2 s): only the leader writes (the API server's audit log, told apart by
each process's token id), a SIGKILLed leader is replaced within lease duration plus a
retry period with no child duplicated or recreated and the jobs progressing, a SIGTERMed
leader hands over at once (it releases the Lease), and a leader whose Lease is taken
stops and exits 1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from flextrain.operator.kube import Conflict, Credentials, KubeClient
from flextrain.operator.leader import LeaderElector, LeadershipLost
from tests.cluster import install
from tests.cluster.conftest import FAST_OPERATOR_ENV, wait_for
from tests.cluster.controlplane import ControlPlane
from tests.cluster.node_agent import NodeAgent
from tests.cluster.test_operator import Jobs, factory_job

LEASE = f"{install.RELEASE}-flextrain-leader"  # the chart's Lease name


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def sa_credentials(
    api: client.ApiClient, control_plane: ControlPlane, installed_chart: Any, tmp_path: Path
) -> Credentials:
    """The chart's ServiceAccount: its Role in the release namespace is what grants Leases."""
    kubeconfig = install.token_kubeconfig(
        api, control_plane, f"{install.RELEASE}-flextrain", install.NAMESPACE, tmp_path / "sa.kubeconfig"
    )
    token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    return Credentials(server=control_plane.server, ca_path=str(control_plane.ca_file), token=token)


def elector(creds: Credentials, name: str, who: str, clock: Clock | None = None, **timing: Any) -> LeaderElector:
    return LeaderElector(
        KubeClient(creds),
        namespace=install.NAMESPACE,
        name=name,
        identity=who,
        **({"clock": clock} if clock else {}),
        **timing,
    )


def lease(api: client.ApiClient, name: str = LEASE) -> dict[str, Any]:
    body: dict[str, Any] = client.CoordinationV1Api(api).read_namespaced_lease(name, install.NAMESPACE).to_dict()
    return body


async def test_two_replicas_racing_for_a_new_lease_get_one_leader(sa_credentials: Credentials) -> None:
    name = f"race-{time.monotonic_ns()}"
    a, b = elector(sa_credentials, name, "a"), elector(sa_credentials, name, "b")
    try:
        won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert sorted(won) == [False, True], won  # the API server accepted one create
        leader, standby = (a, b) if won[0] else (b, a)
        assert not await standby.try_acquire_or_renew()
        assert standby.holder == leader.identity
        assert await leader.try_acquire_or_renew()  # a renewal
    finally:
        await a.client.close()
        await b.client.close()


async def test_a_standby_takes_over_only_once_the_lease_stayed_unchanged_for_its_duration(
    sa_credentials: Credentials, api: client.ApiClient
) -> None:
    name = f"expiry-{time.monotonic_ns()}"
    clock = Clock()
    old, new = elector(sa_credentials, name, "old", clock), elector(sa_credentials, name, "new", clock)
    try:
        assert await old.try_acquire_or_renew()
        assert not await new.try_acquire_or_renew()  # first sight: the clock starts
        clock.advance(10)
        assert await old.try_acquire_or_renew()  # a renewal changes the record ...
        clock.advance(10)
        assert not await new.try_acquire_or_renew()  # ... so the standby's clock restarts
        clock.advance(14.9)
        assert not await new.try_acquire_or_renew()  # 14.9 s unchanged: still held
        clock.advance(0.1)
        assert await new.try_acquire_or_renew()  # 15 s unchanged: taken
        spec = lease(api, name)["spec"]
        assert spec["holder_identity"] == "new" and spec["lease_transitions"] == 1
        # The old leader's renewal carries its stale resourceVersion: 409, it reads the
        # Lease, sees the new holder and does not take it back.
        assert not await old.try_acquire_or_renew()
        assert old.holder == "new"
        with pytest.raises(LeadershipLost, match="held by new"):
            old.retry_period = 0.05
            await asyncio.wait_for(old.hold(), 5)
    finally:
        await old.client.close()
        await new.client.close()


async def test_a_write_with_a_stale_resource_version_is_refused(sa_credentials: Credentials) -> None:
    name = f"stale-{time.monotonic_ns()}"
    one = elector(sa_credentials, name, "one")
    try:
        assert await one.try_acquire_or_renew()
        stale = dict(one.lease or {})
        assert await one.try_acquire_or_renew()  # renewed: a new resourceVersion
        with pytest.raises(Conflict):
            await one.client.replace({**stale, "spec": {**stale["spec"], "holderIdentity": "intruder"}})
    finally:
        await one.client.close()


async def test_a_released_lease_is_taken_at_the_next_attempt(sa_credentials: Credentials, api: client.ApiClient) -> None:
    name = f"release-{time.monotonic_ns()}"
    clock = Clock()
    a, b = elector(sa_credentials, name, "a", clock), elector(sa_credentials, name, "b", clock)
    try:
        assert await a.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew()
        await a.release()
        spec = lease(api, name)["spec"]
        assert spec.get("holder_identity") in (None, "") and spec["lease_duration_seconds"] == 1
        assert await b.try_acquire_or_renew()  # no waiting for expiry (the clock did not move)
    finally:
        await a.client.close()
        await b.client.close()


async def test_a_leader_cut_off_from_the_api_server_gives_up_at_its_renew_deadline(
    sa_credentials: Credentials,
) -> None:
    name = f"cutoff-{time.monotonic_ns()}"
    one = elector(sa_credentials, name, "one", lease_duration=3, renew_deadline=1.0, retry_period=0.2)
    try:
        assert await one.try_acquire_or_renew()
        one.client.set_credentials(Credentials(server="https://127.0.0.1:1", insecure=True))  # nothing listens
        began = time.monotonic()
        with pytest.raises(LeadershipLost, match="not renewed for 1 s"):
            await asyncio.wait_for(one.hold(), 10)
        took = time.monotonic() - began
        assert 0.8 <= took <= 2.0, took  # the deadline (1 s) from the last renewal, plus a retry
        assert not one.leading
    finally:
        await one.client.close()


# -- two operator processes -----------------------------------------------------------------


@pytest.fixture
def operators(
    control_plane: ControlPlane,
    api: client.ApiClient,
    agent: NodeAgent,
    operator: install.OperatorProcess,
    tmp_path: Path,
) -> Iterator[Callable[[str], install.OperatorProcess]]:
    """Room for operator processes of the chart's release (the session's one is stopped,
    which releases the Lease, and started again afterwards). Each gets its own token, so
    the audit log tells their requests apart."""
    assert operator.stop() == 0
    procs: list[install.OperatorProcess] = []
    env = {
        **install.chart_operator_env(api),
        **FAST_OPERATOR_ENV,
        "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": f"dns://{agent.dns.authority}/{{service}}.{{namespace}}.svc:{{port}}",
    }
    assert env["FLEXTRAIN_OPERATOR_LEADER_ELECTION"] == "true" and env["FLEXTRAIN_OPERATOR_LEASE_DURATION"] == "15"

    def start(label: str) -> install.OperatorProcess:
        kubeconfig = install.token_kubeconfig(
            api, control_plane, f"{install.RELEASE}-flextrain", install.NAMESPACE, tmp_path / f"{label}.kubeconfig"
        )
        proc = install.OperatorProcess(
            kubeconfig, {**env, "FLEXTRAIN_OPERATOR_SELF_METRICS_PORT": str(install.free_port())}, tmp_path / f"{label}.log"
        ).start()
        proc.wait_live()
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()
        for proc in procs:
            denials = proc.forbidden()
            assert not denials, "RBAC denials:\n" + "\n".join(denials[:10])
        operator.start()
        operator.wait_live()
        operator.wait_leader()


def holder(api: client.ApiClient) -> str:
    return str(lease(api)["spec"].get("holder_identity") or "")


def writes(plane: ControlPlane, proc: install.OperatorProcess) -> list[dict[str, Any]]:
    return install.audit_writes(plane, install.token_id(proc.kubeconfig))


def metrics(proc: install.OperatorProcess) -> str:
    import urllib.request

    port = proc.env["FLEXTRAIN_OPERATOR_SELF_METRICS_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_only_the_leader_writes_and_a_killed_leader_is_replaced_without_duplicates(
    api: client.ApiClient, control_plane: ControlPlane, operators: Any, namespace: str
) -> None:
    first = operators("first")
    first.wait_leader()
    second = operators("second")
    time.sleep(3)  # a standby's attempts (every 2 s) read the Lease; none writes
    assert second.health() == {"leader": False, "holder": holder(api)}
    jobs = Jobs(api, namespace)
    jobs.create(factory_job("before", namespace))
    before = wait_for(lambda: jobs.all_children_created("before", 3), timeout=60, what="children from the leader")
    wait_for(lambda: jobs.get("before").get("status", {}).get("phase"), timeout=30, what="a status")
    assert writes(control_plane, first), "the leader's writes are not in the audit log"
    assert writes(control_plane, second) == [], "the standby wrote"
    standby_metrics = metrics(second)
    assert "flextrain_operator_leader 0.0" in standby_metrics and "flextrain_operator_reconciles_total 0.0" in standby_metrics
    assert "flextrain_operator_leader 1.0" in metrics(first)

    leader_id = holder(api)
    killed = time.monotonic()
    first.kill()
    jobs.create(factory_job("after", namespace))
    taken = wait_for(lambda: holder(api) not in ("", leader_id), timeout=40, interval=0.1, what="a new holder")
    lease_time = time.monotonic() - killed
    wait_for(lambda: any(jobs.children("after").values()), timeout=40, interval=0.1, what="the new leader's first child")
    reconcile_time = time.monotonic() - killed
    print(f"\nfailover after SIGKILL: Lease taken {lease_time:.1f} s, first child of a job created right after the kill {reconcile_time:.1f} s")
    assert taken
    assert lease_time <= 15 + 2 * 1.2 + 3, lease_time  # lease duration + a retry (+ slack for a loaded machine)
    assert lease_time >= 15 - 2 * 1.2 - 1, f"{lease_time}: taken before the lease could have expired"
    second.wait_leader(timeout=20)
    assert "flextrain_operator_leader 1.0" in metrics(second)

    after = wait_for(lambda: jobs.all_children_created("after", 3), timeout=60, what="the new job's children")
    time.sleep(3)
    assert jobs.children("before") == before, "a child of the first job was recreated or duplicated"
    assert jobs.children("after") == after
    # The first job keeps progressing under the new leader: suspending it suspends its Jobs.
    jobs.patch("before", {"spec": {"suspend": True}})
    batch = client.BatchV1Api(api)
    wait_for(
        lambda: all(j.spec.suspend for j in batch.list_namespaced_job(namespace, label_selector="flextrain.dev/job=before").items),
        timeout=30,
        what="the new leader suspending the first job's tier Jobs",
    )
    assert writes(control_plane, second), "the new leader's writes are not in the audit log"
    assert "Traceback" not in second.text(), second.tail()


def test_a_stopping_leader_releases_the_lease_and_a_standby_takes_over_at_once(
    api: client.ApiClient, operators: Any
) -> None:
    first = operators("first")
    first.wait_leader()
    second = operators("second")
    leader_id = holder(api)
    began = time.monotonic()
    assert first.stop() == 0  # SIGTERM: kopf stops, the Lease is released
    wait_for(lambda: holder(api) not in ("", leader_id), timeout=20, interval=0.1, what="the standby taking over")
    handover = time.monotonic() - began
    print(f"\nhandover after SIGTERM: Lease taken {handover:.1f} s after the signal")
    assert handover < 10, handover  # well before the 15 s expiry: the Lease was released
    assert "released Lease" in first.text()
    second.wait_leader(timeout=20)


def test_a_leader_whose_lease_is_taken_stops_and_exits_1(api: client.ApiClient, operators: Any) -> None:
    first = operators("first")
    first.wait_leader()
    coordination = client.CoordinationV1Api(api)
    taken = coordination.read_namespaced_lease(LEASE, install.NAMESPACE)
    taken.spec.holder_identity = "someone-else"
    coordination.replace_namespaced_lease(LEASE, install.NAMESPACE, taken)
    began = time.monotonic()
    assert first.proc is not None
    code = first.proc.wait(20)
    print(f"\nthe leader noticed the Lease taken and exited {time.monotonic() - began:.1f} s later")
    assert code == 1, first.tail()
    assert "leadership lost" in first.text()
    # Leave the Lease free for the session's operator.
    taken = coordination.read_namespaced_lease(LEASE, install.NAMESPACE)
    taken.spec.holder_identity = None
    taken.spec.lease_duration_seconds = 1
    coordination.replace_namespaced_lease(LEASE, install.NAMESPACE, taken)
