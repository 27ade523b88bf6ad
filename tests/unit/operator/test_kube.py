"""The API client's pure parts: URLs, status patches, error mapping."""

from __future__ import annotations

import pytest

from flextrain.operator.kube import Conflict, NotFound, _error, status_patch, url_of


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
