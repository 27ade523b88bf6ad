"""What `flextrain validate` says against what the real API server says.

- crds/ is accepted (structural schema, CEL cost budget) and every example applies;
- every bad manifest of tests/unit/api/test_validate.py that validate refuses with a
  rule the CRD expresses is refused by the server too, naming the same field;
- the cross-object ones the server cannot see (a missing DeviceTier, depth auto without
  capacity) are accepted by it and reported by the operator on the job;
- nothing validate accepts is refused by the server: neither the resources nor any
  child the operator builds from them (Secret, Service, Deployment, tier Jobs).

Requests use server-side dry run and strict field validation, as `kubectl apply` does.
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from flextrain.api.devicetier import DeviceTier
from flextrain.api.flextrainjob import FlexTrainJob
from flextrain.api.validation import validate_documents
from flextrain.jobplan import plan_job
from flextrain.operator import builders, names
from flextrain.operator.config import OperatorSettings
from tests.cluster import install
from tests.cluster.conftest import wait_for
from tests.cluster.controlplane import ControlPlane, RawResponse, request
from tests.tools import REPO
from tests.unit.api.test_validate import BAD, GOOD, _documents

Body = dict[str, Any]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

PLURALS = {
    "FlexTrainJob": ("/apis/flextrain.dev/v1alpha1", "flextrainjobs", True),
    "DeviceTier": ("/apis/flextrain.dev/v1alpha1", "devicetiers", False),
    "Secret": ("/api/v1", "secrets", True),
    "Service": ("/api/v1", "services", True),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "Job": ("/apis/batch/v1", "jobs", True),
}


def create(plane: ControlPlane, body: Body, namespace: str, *, dry_run: bool = True) -> RawResponse:
    """POST `body` with strict field validation (and server-side dry run)."""
    root, plural, namespaced = PLURALS[body["kind"]]
    path = f"{root}/namespaces/{namespace}/{plural}" if namespaced else f"{root}/{plural}"
    if namespaced:
        body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    query = "fieldValidation=Strict" + ("&dryRun=All" if dry_run else "")
    return request(plane, "POST", path, body, query=query)


def refusal(plane: ControlPlane, body: Body, namespace: str) -> str | None:
    """The server's refusal message of a dry-run create, or None when accepted."""
    resp = create(plane, body, namespace)
    if resp.status in (200, 201):
        return None
    assert resp.status in (400, 422), f"unexpected {resp.status}: {resp.body}"
    return str(resp.body.get("message"))


def _renamed(docs: list[Any], suffix: str) -> tuple[Body, Body]:
    """(tier, job) with DeviceTier names made unique to this test (they are cluster-wide)."""
    tier, job = (copy.deepcopy(d.body) for d in docs)
    tier["metadata"]["name"] = f"{tier['metadata']['name']}-{suffix}"
    for t in job.get("spec", {}).get("tiers") or []:
        if isinstance(t, dict) and isinstance(t.get("deviceTierRef"), str):
            t["deviceTierRef"] = f"{t['deviceTierRef']}-{suffix}"
    return tier, job


def test_crds_are_accepted_by_the_api_server(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    installed_chart: subprocess.CompletedProcess[str],
) -> None:
    done = kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", str(REPO / "crds"), check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("serverside-applied") == 2, done.stdout


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_every_example_applies(
    kubectl: Callable[..., subprocess.CompletedProcess[str]],
    installed_chart: subprocess.CompletedProcess[str],
    namespace: str,
    example: Path,
) -> None:
    done = kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(example), check=False)
    assert done.returncode == 0, f"{example.name}: {done.stderr}"


#: Conditions that report a job the operator cannot build as asked.
PROBLEMS = {("TiersAvailable", "False"), ("Progressing", "False"), ("Failed", "True")}
PROBLEM_REASONS = {"DeviceTierNotFound", "DepthUnsatisfiable", "DeviceTierInvalid", "SpecInvalid", "ChildRefused", "ChildInvalid"}

SERVER_RULES = [b for b in BAD if b[4]]
CROSS_OBJECT = [b for b in BAD if not b[4]]


@pytest.mark.parametrize(("case", "kind", "mutate", "path", "crd"), SERVER_RULES, ids=[b[0] for b in SERVER_RULES])
def test_what_validate_refuses_the_server_refuses_naming_the_field(
    control_plane: ControlPlane,
    api: client.ApiClient,
    installed_chart: subprocess.CompletedProcess[str],
    case: str,
    kind: str,
    mutate: Callable[[Body], None],
    path: str,
    crd: bool,
) -> None:
    docs, _ = _documents(kind, mutate)
    assert not validate_documents(docs).ok
    tier, job = _renamed(docs, uuid.uuid4().hex[:6])
    target = job if kind == "job" else tier
    message = refusal(control_plane, target, "default")
    assert message is not None, f"{case}: the API server accepted what validate refuses"
    # The server names the field; for a bad map key (a label, a resource name) the map;
    # for a rule across fields (CEL on spec) the field in its message.
    prefixes = [*[path[:i] for i, ch in enumerate(path) if ch == "."][1:], path]
    field = path.rsplit(".", 1)[-1].split("[")[0]
    assert any(p in message for p in prefixes) or f".{field}" in message, (
        f"{case}: the server's message does not name {path}: {message}"
    )


@pytest.mark.parametrize(("case", "kind", "mutate", "path", "crd"), CROSS_OBJECT, ids=[b[0] for b in CROSS_OBJECT])
def test_cross_object_rules_are_reported_by_the_operator(
    control_plane: ControlPlane,
    api: client.ApiClient,
    operator: install.OperatorProcess,
    namespace: str,
    case: str,
    kind: str,
    mutate: Callable[[Body], None],
    path: str,
    crd: bool,
) -> None:
    docs, _ = _documents(kind, mutate)
    assert not validate_documents(docs).ok
    tier, job = _renamed(docs, namespace[-5:])
    created = create(control_plane, tier, namespace, dry_run=False)
    assert created.status == 201, created.body
    try:
        created = create(control_plane, job, namespace, dry_run=False)
        assert created.status == 201, created.body
        custom = client.CustomObjectsApi(api)

        def reported() -> Body | None:
            obj = custom.get_namespaced_custom_object("flextrain.dev", "v1alpha1", namespace, "flextrainjobs", job["metadata"]["name"])
            for cond in obj.get("status", {}).get("conditions", []):
                if (cond["type"], cond["status"]) in PROBLEMS:
                    return dict(cond)
            return None

        cond = wait_for(reported, timeout=30, what=f"{case}: a condition on the job explaining it")
        assert cond["reason"] in PROBLEM_REASONS, cond
        # No trainer runs for a job that cannot be built as asked.
        assert not client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector="flextrain.dev/component=trainer").items
    finally:
        client.CustomObjectsApi(api).delete_cluster_custom_object(
            "flextrain.dev", "v1alpha1", "devicetiers", tier["metadata"]["name"]
        )


ACCEPTED = [("unmutated", "job", lambda body: None), *GOOD]


@pytest.mark.parametrize(("case", "kind", "mutate"), ACCEPTED, ids=[g[0] for g in ACCEPTED])
def test_what_validate_accepts_the_server_accepts_with_every_child(
    control_plane: ControlPlane,
    api: client.ApiClient,
    installed_chart: subprocess.CompletedProcess[str],
    namespace: str,
    case: str,
    kind: str,
    mutate: Callable[[Body], None],
) -> None:
    docs, _ = _documents(kind, mutate)
    assert validate_documents(docs).ok
    tier, job = _renamed(docs, namespace[-5:])
    for body in (tier, job):
        assert refusal(control_plane, body, namespace) is None, f"{case}: {body['kind']} refused"

    job["metadata"]["namespace"] = namespace
    model = FlexTrainJob.model_validate(job)
    device_tier = DeviceTier.model_validate(tier)
    plan = plan_job(model, {device_tier.metadata.name: device_tier})
    settings = OperatorSettings(image="registry.example/flextrain:1")
    owner = names.owner_reference("FlexTrainJob", model.metadata.name, str(uuid.uuid4()))
    children = [
        builders.build_secret(model, "token", owner),
        builders.build_aggregator_service(model, owner, settings),
        builders.build_aggregator_deployment(plan, owner, settings),
        *(builders.build_tier_job(plan, t, device_tier, owner, settings) for t in plan.tiers),
    ]
    for child in children:
        message = refusal(control_plane, child, namespace)
        assert message is None, f"{case}: the server refuses the {child['kind']} the operator builds: {message}"
