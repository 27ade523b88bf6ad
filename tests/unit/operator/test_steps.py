"""The steps of reconcile(), one rule each, without the whole pass."""

from __future__ import annotations

from datetime import timedelta

import pytest

from flextrain.api.conditions import JobPhase, JobReason
from flextrain.api.flextrainjob import TierStatus, quorum_count
from flextrain.operator.steps import Health, Progress, deadline, degraded_condition, job_phase
from tests.unit.operator.conftest import NOW, job


@pytest.mark.parametrize(
    ("quorum", "devices", "need"),
    [(1.0, 3, 3), (0.5, 3, 2), (0.34, 3, 2), (1 / 3, 3, 1), (0.01, 3, 1), (0.7, 10, 7)],
)
def test_one_quorum_formula(quorum: float, devices: int, need: int) -> None:
    assert quorum_count(quorum, devices) == need


def test_the_deadline_counts_from_the_start_and_not_while_suspended() -> None:
    j = job(activeDeadlineSeconds=60)
    assert deadline(j, NOW - timedelta(seconds=20), NOW, done=False) == (40.0, False)
    assert deadline(j, NOW - timedelta(seconds=60), NOW, done=False) == (None, True)
    assert deadline(j, NOW - timedelta(seconds=90), NOW, done=True) == (None, False)
    assert deadline(job(activeDeadlineSeconds=60, suspend=True), NOW, NOW, done=False) == (
        None,
        False,
    )


def _progress(ready: int, round_: int | None = None) -> Progress:
    tiers = [TierStatus(name="t", replicas=1, ready=ready)]
    return Progress(tiers, round_, None, None, NOW)


def test_the_phase_puts_failure_before_success_before_suspension() -> None:
    failure = (JobReason.QUORUM_LOST, "lost")
    j, suspended = job(), job(suspend=True)
    assert job_phase(failure, True, suspended, True, True, _progress(1)) == JobPhase.FAILED
    assert job_phase(None, True, suspended, True, True, _progress(1)) == JobPhase.SUCCEEDED
    assert job_phase(None, False, suspended, True, True, _progress(1)) == JobPhase.SUSPENDED
    assert job_phase(None, False, j, True, True, _progress(1)) == JobPhase.DEGRADED
    assert job_phase(None, False, j, False, True, _progress(1)) == JobPhase.RUNNING
    assert job_phase(None, False, j, False, True, _progress(0)) == JobPhase.PENDING
    assert job_phase(None, False, j, False, True, _progress(0, round_=2)) == JobPhase.RUNNING
    assert job_phase(None, False, j, False, False, _progress(1)) == JobPhase.PENDING


def test_degraded_names_lost_tiers_first_then_unschedulable_pods() -> None:
    lost = Health(3, 2, {"weak": (1, "1 of 2 replicas failed permanently")}, {"deep": ["0/2 nodes"]}, False)
    verdict = degraded_condition(lost, aggregator_lost=True, started=True)
    assert verdict is not None and verdict.reason == JobReason.TIER_JOB_FAILED
    assert "2 of 3 devices, quorum needs 2" in verdict.message and "0/2 nodes" in verdict.message
    pods = Health(3, 2, {}, {"deep": ["0/2 nodes"]}, False)
    assert degraded_condition(pods, True, True).reason == JobReason.PODS_UNSCHEDULABLE  # type: ignore[union-attr]
    healthy = Health(3, 2, {}, {}, False)
    assert degraded_condition(healthy, True, True).reason == JobReason.AGGREGATOR_UNAVAILABLE  # type: ignore[union-attr]
    assert degraded_condition(healthy, False, True).status == "False"  # type: ignore[union-attr]
    assert degraded_condition(healthy, False, False) is None
