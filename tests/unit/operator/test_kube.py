"""The API client's pure parts: URLs, status patches, error mapping."""

from __future__ import annotations

import re
from typing import Any

import pytest

from flextrain.operator.kube import (
    Conflict,
    KubeClient,
    NotFound,
    _error,
    status_patch,
    url_of,
)


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("v1", "Secret", "ns", "s"), "/api/v1/namespaces/ns/secrets/s"),
        (("batch/v1", "Job", "ns"), "/apis/batch/v1/namespaces/ns/jobs"),
        (
            ("flextrain.dev/v1alpha1", "DeviceTier", None, "gpu", "status"),
            "/apis/flextrain.dev/v1alpha1/devicetiers/gpu/status",
        ),
        (
            ("flextrain.dev/v1alpha1", "FlexTrainJob", "a", "j", "status"),
            "/apis/flextrain.dev/v1alpha1/namespaces/a/flextrainjobs/j/status",
        ),
        (("cert-manager.io/v1", "Certificate", "a"), "/apis/cert-manager.io/v1/namespaces/a/certificates"),
    ],
)
def test_url_of(args: tuple[str, ...], path: str) -> None:
    assert url_of(*args) == path


def test_url_of_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="does not handle"):
        url_of("v1", "ConfigMap", "ns")


def test_status_patch_sends_only_changes_and_nulls_removed_keys() -> None:
    before = {"phase": "Running", "round": 2, "modelLocation": "x", "kopf": {"progress": {}}}
    after = {"phase": "Running", "round": 3}
    assert status_patch(before, after) == {"round": 3, "modelLocation": None}
    assert status_patch(after, after) == {}


def test_errors_map_to_named_exceptions() -> None:
    assert isinstance(_error(404, '{"reason": "NotFound", "message": "gone"}'), NotFound)
    err = _error(409, '{"reason": "AlreadyExists", "message": "exists"}')
    assert isinstance(err, Conflict) and err.reason == "AlreadyExists" and "exists" in str(err)
    assert _error(500, "not json").status == 500


SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LONGEST = "a" * 200 + "." + "b" * 52  # 253 characters: the longest object name there is


@pytest.mark.parametrize("name", ["train", "a.b-c", LONGEST, "x" * 236, "y" * 237, "a" * 235 + ".b"])
async def test_event_names_are_valid_for_any_object_name(name: str) -> None:
    client = KubeClient()
    posted: list[tuple[str, str, Any]] = []

    async def request(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        posted.append((method, path, kwargs["body"]))
        return {}

    client.request = request  # type: ignore[method-assign]
    involved = {"apiVersion": "flextrain.dev/v1alpha1", "kind": "FlexTrainJob",
                "metadata": {"name": name, "namespace": "ns", "uid": "u"}}
    await client.post_event(involved, "Warning", "Reason", "message")
    await client.post_event(involved, "Warning", "Reason", "message")
    names = [body["metadata"]["name"] for _, _, body in posted]
    for event in names:
        assert len(event) <= 253 and SUBDOMAIN.match(event), event
    assert names[0] != names[1]  # every Event is a new object
    assert all(body["involvedObject"]["name"] == name for _, _, body in posted)
    assert posted[0][1] == "/api/v1/namespaces/ns/events"
    if len(name) <= 236:
        assert names[0].startswith(name + ".")  # short names stay readable as they are


async def test_busy_connections_are_handed_out_by_lane_then_job_then_arrival() -> None:
    import asyncio

    from flextrain.operator.kube import ORDER, Lane, _Gate

    gate = _Gate(1)
    await gate.acquire(Lane.CREATE)  # the one connection is busy
    let_in: list[str] = []

    async def wait(what: str, lane: Lane, order: int) -> None:
        ORDER.set(order)
        await gate.acquire(lane)
        let_in.append(what)
        gate.release()

    waiters = [
        asyncio.create_task(wait(*w))
        for w in [
            ("event job 1", Lane.EVENT, 1),
            ("status job 1", Lane.STATUS, 1),
            ("create job 2", Lane.CREATE, 2),
            ("create job 1", Lane.CREATE, 1),
            ("create job 1 again", Lane.CREATE, 1),
            ("patch job 3", Lane.CHANGE, 3),
        ]
    ]
    await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*waiters)
    assert let_in == [
        "create job 1",
        "create job 1 again",
        "create job 2",
        "patch job 3",
        "status job 1",
        "event job 1",
    ]


async def test_a_cancelled_waiter_does_not_keep_a_connection() -> None:
    import asyncio

    from flextrain.operator.kube import Lane, _Gate

    gate = _Gate(1)
    await gate.acquire(Lane.CREATE)
    gone = asyncio.create_task(gate.acquire(Lane.CREATE))
    await asyncio.sleep(0)
    gone.cancel()  # cancelled while waiting
    handed = asyncio.create_task(gate.acquire(Lane.EVENT))
    await asyncio.sleep(0)
    gate.release()  # skips the cancelled waiter
    await asyncio.wait_for(handed, 1)
    # Let in, then cancelled before it ran: the slot comes back.
    late = asyncio.create_task(gate.acquire(Lane.CREATE))
    await asyncio.sleep(0)
    gate.release()  # hands the slot to `late`...
    late.cancel()  # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await late
    await asyncio.wait_for(gate.acquire(Lane.CREATE), 1)  # the slot was given back


async def test_a_fenced_client_sends_no_write() -> None:
    """After leadership is lost, a pass half-way through cannot write: every verb but GET
    is refused before anything is sent (no credentials are even needed to show it)."""
    from flextrain.operator.kube import KubeError

    client = KubeClient()
    client.fence("leadership lost: test")
    for call in (
        client.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}}),
        client.patch("batch/v1", "Job", "j", "ns", {"spec": {"suspend": True}}),
        client.replace({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": "ns"}}),
        client.delete("v1", "Secret", "s", "ns"),
    ):
        with pytest.raises(KubeError, match="not sent: leadership lost: test"):
            await call
    assert client.requests == {}
    with pytest.raises(KubeError, match="no credentials"):  # reads still go (and fail here for want of a server)
        await client.get("v1", "Secret", "s", "ns")
