"""Operator settings from FLEXTRAIN_OPERATOR_* variables."""

from __future__ import annotations

import pytest

from flextrain.operator.config import OperatorSettings, SettingsError


def test_defaults_are_cluster_wide() -> None:
    s = OperatorSettings.from_env({})
    assert s.cluster_wide and s.aggregator_port == 50051 and s.status_interval == 10.0
    assert s.address_of("ns", "job", "job-aggregator") == "job-aggregator.ns.svc:50051"


def test_environment_overrides() -> None:
    s = OperatorSettings.from_env(
        {
            "FLEXTRAIN_OPERATOR_IMAGE": "reg/ft:2",
            "FLEXTRAIN_OPERATOR_NAMESPACES": "team-a, team-b",
            "FLEXTRAIN_OPERATOR_STATUS_INTERVAL": "2.5",
            "FLEXTRAIN_OPERATOR_RESTRICTED_PODS": "false",
            "FLEXTRAIN_OPERATOR_BACKOFF_LIMIT_PER_INDEX": "5",
            "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESSES": "team-a/j1=127.0.0.1:5000",
            "FLEXTRAIN_OPERATOR_AGGREGATOR_ADDRESS": "{service}.{namespace}.svc.cluster.local:{port}",
        }
    )
    assert s.image == "reg/ft:2" and s.namespaces == ("team-a", "team-b") and not s.cluster_wide
    assert (
        s.status_interval == 2.5 and s.restricted_pods is False and s.backoff_limit_per_index == 5
    )
    assert s.status_address_of("team-a", "j1", "j1-aggregator") == "127.0.0.1:5000"
    assert (
        s.status_address_of("team-a", "j2", "j2-aggregator")
        == "j2-aggregator.team-a.svc.cluster.local:50051"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STATUS_INTERVAL", "soon", "is not a number"),
        ("STATUS_INTERVAL", "0", "must be > 0"),
        ("RESTRICTED_PODS", "maybe", "use true or false"),
        ("IMAGE_PULL_POLICY", "Sometimes", "use Always, IfNotPresent or Never"),
        ("AGGREGATOR_ADDRESSES", "j1=host:1", "is not namespace/job=host:port"),
        ("AGGREGATOR_ADDRESS", "{svc}:1", "unknown placeholder"),
        ("AGGREGATOR_MEMORY", "lots", "not a Kubernetes quantity"),
        ("METRICS_PORT", "50051", "must differ"),
        ("AGGREGATOR_HEALTH_PORT", "9090", "another port than"),
        ("AGGREGATOR_HEALTH_PORT", "70000", "use 1..65535"),
        ("TLS_CERTIFICATE_DAYS", "0.5", "use >= 1"),
        ("TLS_RENEW_FRACTION", "1", "between 0 and 1"),
        ("TLS_RENEW_FRACTION", "0", "between 0 and 1"),
        ("CLUSTER_DOMAIN", "cluster..local", "is not a DNS domain"),
        ("ALLOW_PLAINTEXT", "sometimes", "use true or false"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env({f"FLEXTRAIN_OPERATOR_{variable}": value})
