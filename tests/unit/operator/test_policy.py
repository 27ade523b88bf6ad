"""The tenancy policy: what a namespace user's FlexTrainJob may make the operator run."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from flextrain.api.conditions import JobPhase
from flextrain.operator import policy
from flextrain.operator.config import OperatorSettings, SettingsError
from tests.unit.operator.conftest import job
from tests.unit.operator.test_reconcile import SETTINGS as RECONCILE_SETTINGS
from tests.unit.operator.test_reconcile import cond, run, started

SETTINGS = dataclasses.replace(RECONCILE_SETTINGS, image="registry.example/flextrain:1")

HOST_DATA = {"name": "fashion-mnist", "source": {"hostPath": {"path": "/srv/data/fashion"}}}


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        (None, True),
        ("registry.example/flextrain:1", True),  # the default image's repository
        ("registry.example/flextrain:1-cuda", True),
        ("registry.example/flextrain@sha256:" + "a" * 64, True),
        ("registry.example/flextrain-evil:1", False),
        ("registry.example/other:1", False),
        ("docker.io/library/busybox", False),
    ],
)
def test_images_must_come_from_the_operators_repository_by_default(image: str | None, allowed: bool) -> None:
    broken = policy.violations(job(image=image) if image else job(), SETTINGS)
    assert (not broken) is allowed, broken
    if not allowed:
        assert broken[0].field == "spec.image" and "registry.example/flextrain:" in str(broken[0])


def test_a_factory_widens_the_images_with_prefixes() -> None:
    settings = dataclasses.replace(SETTINGS, allowed_images=("registry.factory.local/ml/",))
    assert not policy.violations(job(image="registry.factory.local/ml/trainer:2"), settings)
    assert policy.violations(job(image="registry.example/flextrain:1"), settings)
    anything = dataclasses.replace(SETTINGS, allowed_images=("*",))
    assert not policy.violations(job(image="docker.io/library/busybox"), anything)


def test_a_service_account_needs_the_operators_leave() -> None:
    j = job(podTemplate={"serviceAccountName": "builder"})
    [broken] = policy.violations(j, SETTINGS)
    assert broken.field == "spec.podTemplate.serviceAccountName" and "no API token" in str(broken)
    assert not policy.violations(j, dataclasses.replace(SETTINGS, allow_service_account=True))


@pytest.mark.parametrize(
    ("prefixes", "path", "allowed"),
    [
        ((), "/srv/data/fashion", False),
        ((), "/", False),
        (("/srv/data",), "/srv/data/fashion", True),
        (("/srv/data/",), "/srv/data", True),
        (("/srv/data",), "/srv/database", False),  # whole path elements only
        (("/srv/data",), "/", False),
        (("/",), "/etc", True),
    ],
)
def test_host_path_data_only_under_the_allowed_prefixes(prefixes: tuple[str, ...], path: str, allowed: bool) -> None:
    settings = dataclasses.replace(SETTINGS, host_path_prefixes=prefixes)
    data = {"name": "fashion-mnist", "source": {"hostPath": {"path": path}}}
    broken = policy.violations(job(dataset=data), settings)
    assert (not broken) is allowed, broken
    # A tier's own data source is held to the same rule.
    tiers: list[dict[str, Any]] = [
        {"name": "strong", "deviceTierRef": "gpu", "replicas": 1, "depth": 9},
        {"name": "weak", "deviceTierRef": "cpu", "replicas": 2, "depth": 3, "dataSource": {"hostPath": {"path": path}}},
    ]
    broken = policy.violations(job(tiers=tiers), settings)
    assert (not broken) is allowed
    if not allowed:
        assert broken[0].field == "spec.tiers[1].dataSource.hostPath.path"


@pytest.mark.parametrize(
    ("keys", "tolerations", "allowed"),
    [
        ((), [], True),
        ((), [{"key": "factory.local/line", "operator": "Exists"}], False),
        ((), [{"operator": "Exists"}], False),  # no key: tolerates every taint
        (("factory.local/line",), [{"key": "factory.local/line", "operator": "Exists"}], True),
        (("factory.local/line",), [{"key": "nvidia.com/gpu", "operator": "Exists"}], False),
        (("factory.local/line",), [{"operator": "Exists"}], False),
        (("*",), [{"operator": "Exists"}], True),
    ],
)
def test_aggregator_tolerations_only_for_the_allowed_taint_keys(
    keys: tuple[str, ...], tolerations: list[dict[str, Any]], allowed: bool
) -> None:
    settings = dataclasses.replace(SETTINGS, aggregator_toleration_keys=keys)
    broken = policy.violations(job(aggregator={"tolerations": tolerations}), settings)
    assert (not broken) is allowed, broken
    if not allowed:
        assert broken[0].field == "spec.aggregator.tolerations[0].key"
        assert ("may not give the aggregator tolerations" if not keys else "only the taint keys") in str(broken[0])


def test_a_refused_job_gets_a_condition_and_an_event_and_nothing_is_created() -> None:
    plan = run(job(image="docker.io/library/busybox", dataset=HOST_DATA), settings=SETTINGS)
    assert plan.create == []
    assert plan.status.phase == JobPhase.PENDING
    assert cond(plan, "Progressing") == ("False", "PolicyViolation")
    [event] = [e for e in plan.events if e.reason == "PolicyViolation"]
    assert event.type == "Warning" and "spec.image" in event.message and "hostPath" in event.message
    # Steady state: the same pass again changes nothing and posts nothing.
    again = run(job(image="docker.io/library/busybox", dataset=HOST_DATA), status=plan.status, settings=SETTINGS)
    assert again.status == plan.status and not again.events


def test_a_running_job_edited_into_a_refusal_keeps_what_exists_and_gets_nothing_new() -> None:
    observed = started()
    observed.tier_jobs.pop("weak")  # deleted: it would be re-created
    assert run(observed=observed, settings=SETTINGS).create
    plan = run(job(image="docker.io/library/busybox"), observed=observed, settings=SETTINGS)
    assert plan.create == [] and cond(plan, "Progressing") == ("False", "PolicyViolation")
    assert cond(plan, "AggregatorReady") == ("True", "AggregatorReady")  # the rest is reconciled as usual


def test_policy_settings_read_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "FLEXTRAIN_OPERATOR_ALLOWED_IMAGES": "a.example/x:, b.example/",
            "FLEXTRAIN_OPERATOR_ALLOW_SERVICE_ACCOUNT": "true",
            "FLEXTRAIN_OPERATOR_HOST_PATH_PREFIXES": "/srv/data,/mnt/line",
            "FLEXTRAIN_OPERATOR_AGGREGATOR_TOLERATION_KEYS": "factory.local/line, nvidia.com/gpu",
        }
    )
    assert settings.aggregator_toleration_keys == ("factory.local/line", "nvidia.com/gpu")
    assert settings.allowed_images == ("a.example/x:", "b.example/")
    assert settings.allow_service_account
    assert settings.host_path_prefixes == ("/srv/data", "/mnt/line")
    with pytest.raises(SettingsError, match="not an absolute path"):
        OperatorSettings.from_env({"FLEXTRAIN_OPERATOR_HOST_PATH_PREFIXES": "srv"})


@pytest.mark.parametrize(
    ("tls", "allow_plaintext", "allowed"),
    [
        (None, False, True),  # TLS by default
        ({"mode": "Enabled"}, False, True),
        ({"mode": "Disabled"}, True, True),  # the explicit opt-out, allowed by default
        ({"mode": "Disabled"}, False, False),
    ],
)
def test_plaintext_only_by_explicit_opt_out_and_only_where_the_policy_allows_it(
    tls: dict[str, str] | None, allow_plaintext: bool, allowed: bool
) -> None:
    spec = {"aggregator": {"tls": tls}} if tls else {}
    settings = dataclasses.replace(SETTINGS, allow_plaintext=allow_plaintext)
    broken = policy.violations(job(**spec), settings)
    assert (not broken) is allowed, broken
    if not allowed:
        assert broken[0].field == "spec.aggregator.tls.mode" and "plaintext is off" in str(broken[0])
    assert OperatorSettings().allow_plaintext  # the default
