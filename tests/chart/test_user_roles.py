"""The people's roles: `<fullname>-edit` may do everything with FlexTrainJobs but not
write their status, and only read DeviceTiers (cluster-scoped, a cluster admin's);
`<fullname>-view` only reads. Aggregated into the built-in admin/edit/view roles by
their labels. The real API server's verdicts on them: tests/cluster/test_install_guide.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import CHART, Tools, documents, of_kind, run, value_args

pytestmark = pytest.mark.timeout(60)

Render = Callable[..., str]
AGGREGATE = "rbac.authorization.k8s.io/aggregate-to-"
WRITE = {"create", "update", "patch", "delete", "deletecollection"}
READ = {"get", "list", "watch"}


def user_roles(text: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in of_kind(documents(text), "ClusterRole")
            if r["metadata"]["labels"]["app.kubernetes.io/component"] == "user-role"}


def verbs(role: dict[str, Any], resource: str) -> set[str]:
    return {v for rule in role["rules"] if "flextrain.dev" in rule["apiGroups"] and resource in rule["resources"]
            for v in rule["verbs"]}


def test_edit_and_view_roles_are_named_after_the_release_and_aggregated(render: Render) -> None:
    roles = user_roles(render())
    assert set(roles) == {"ft-flextrain-edit", "ft-flextrain-view"}
    edit, view = roles["ft-flextrain-edit"], roles["ft-flextrain-view"]
    assert {k.removeprefix(AGGREGATE) for k, v in edit["metadata"]["labels"].items()
            if k.startswith(AGGREGATE) and v == "true"} == {"edit", "admin"}
    assert {k.removeprefix(AGGREGATE) for k, v in view["metadata"]["labels"].items()
            if k.startswith(AGGREGATE) and v == "true"} == {"view"}


def test_edit_writes_jobs_only_and_view_writes_nothing(render: Render) -> None:
    roles = user_roles(render())
    edit, view = roles["ft-flextrain-edit"], roles["ft-flextrain-view"]
    assert verbs(edit, "flextrainjobs") == READ | WRITE
    for resource in ("flextrainjobs/status", "devicetiers", "devicetiers/status"):
        assert verbs(edit, resource) == READ, resource
    for resource in ("flextrainjobs", "flextrainjobs/status", "devicetiers", "devicetiers/status"):
        assert verbs(view, resource) == READ, resource
    # Nothing else: no finalizers (blockOwnerDeletion is the operator's), no other group.
    for role in (edit, view):
        assert all(rule["apiGroups"] == ["flextrain.dev"] for rule in role["rules"])
        assert not any("flextrainjobs/finalizers" in rule["resources"] for rule in role["rules"])


@pytest.mark.parametrize(("values", "names", "aggregated"), [
    pytest.param({"userRoles": {"create": False}}, set(), False, id="off"),
    pytest.param({"userRoles": {"aggregate": False}}, {"ft-flextrain-edit", "ft-flextrain-view"}, False,
                 id="not-aggregated"),
])
def test_user_role_switches(tools: Tools, tmp_path: Path, values: dict[str, Any], names: set[str],
                            aggregated: bool) -> None:
    proc = run([tools.helm, "template", "ft", CHART, *value_args([values], tmp_path)])
    assert proc.returncode == 0, proc.stderr
    roles = user_roles(proc.stdout)
    assert set(roles) == names
    for role in roles.values():
        assert any(k.startswith(AGGREGATE) for k in role["metadata"]["labels"]) is aggregated
