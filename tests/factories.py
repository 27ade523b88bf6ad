"""Factories for manifests and API objects used across the test suite."""

from __future__ import annotations

import copy
from typing import Any


def make_tier(name: str = "cpu", **spec: Any) -> dict[str, Any]:
    """A valid DeviceTier manifest; keyword arguments replace spec fields."""
    body: dict[str, Any] = {
        "apiVersion": "flextrain.dev/v1alpha1",
        "kind": "DeviceTier",
        "metadata": {"name": name},
        "spec": {
            "architecture": "amd64",
            "nodeSelector": {"flextrain.dev/pool": name},
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "capacity": {"parameters": 100000},
        },
    }
    body["spec"].update(spec)
    return body


def make_job(name: str = "job", **spec: Any) -> dict[str, Any]:
    """A valid FlexTrainJob manifest with two tiers on DeviceTier 'cpu'."""
    body: dict[str, Any] = {
        "apiVersion": "flextrain.dev/v1alpha1",
        "kind": "FlexTrainJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"family": "resnet", "layers": 20},
            "dataset": {"name": "digits", "partition": {"scheme": "iid"}},
            "training": {"rounds": 2, "localEpochs": 1, "batchSize": 32},
            "tiers": [
                {"name": "strong", "deviceTierRef": "cpu", "replicas": 1, "depth": 9},
                {"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": 3},
            ],
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body
