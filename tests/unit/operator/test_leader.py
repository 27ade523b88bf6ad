"""The leader election's decisions (flextrain/operator/leader.py): when a Lease counts as
held, expired or free, and what a replica writes to take, renew or release it. The I/O
(create, PUT with resourceVersion, 409s from a real API server, two electors racing) is
tested against the test control plane in tests/cluster/test_leader_election.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flextrain.operator import leader
from flextrain.operator.config import OperatorSettings, SettingsError
from flextrain.operator.leader import (
    LeaseRecord,
    Observation,
    claim,
    held_by_other,
    observe,
    released,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
HELD = LeaseRecord("op-a_1234", 15, "2026-01-02T03:04:05.000000Z", "2026-01-02T03:04:05.000000Z", 3)


def test_a_lease_read_from_the_api_round_trips_and_survives_missing_or_wrong_fields() -> None:
    lease = {"spec": HELD.spec()}
    assert LeaseRecord.from_lease(lease) == HELD
    assert LeaseRecord.from_lease({}) == LeaseRecord()
    odd = LeaseRecord.from_lease({"spec": {"holderIdentity": 7, "leaseDurationSeconds": "15", "leaseTransitions": True}})
    assert odd == LeaseRecord()  # nothing typed wrong is believed: the Lease looks free (no holder)
    assert "holderIdentity" not in released(HELD, T0).spec()


def test_the_expiry_clock_restarts_only_when_the_record_changes() -> None:
    first = observe(None, HELD, now=100.0)
    assert first == Observation(HELD, 100.0)
    assert observe(first, HELD, now=110.0) is first  # unchanged: the clock keeps running
    renewed = HELD.__class__(**{**HELD.__dict__, "renew_time": "2026-01-02T03:04:07.000000Z"})
    assert observe(first, renewed, now=110.0) == Observation(renewed, 110.0)


@pytest.mark.parametrize(
    ("holder", "seen_at", "now", "held"),
    [
        ("op-a_1234", 100.0, 100.0, True),  # just seen
        ("op-a_1234", 100.0, 114.9, True),  # within leaseDurationSeconds (15)
        ("op-a_1234", 100.0, 115.0, False),  # expired by our clock
        ("", 100.0, 100.0, False),  # released: free at once
        ("me_5678", 100.0, 100.0, False),  # ours
    ],
)
def test_a_lease_is_held_by_another_until_it_expires_by_the_standbys_own_clock(
    holder: str, seen_at: float, now: float, held: bool
) -> None:
    record = LeaseRecord(holder, 15, None, None, 0)
    assert held_by_other(Observation(record, seen_at), "me_5678", now) is held


def test_holders_clock_is_never_compared_with_ours() -> None:
    """A renewTime from a clock far ahead or behind changes nothing: only how long the
    record stayed unchanged here counts."""
    skewed = LeaseRecord("op-a_1234", 15, "1999-01-01T00:00:00.000000Z", "1999-01-01T00:00:00.000000Z", 0)
    assert held_by_other(Observation(skewed, 100.0), "me", 110.0)
    ahead = LeaseRecord("op-a_1234", 15, "2999-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z", 0)
    assert not held_by_other(Observation(ahead, 100.0), "me", 115.0)


def test_taking_a_lease_counts_a_transition_and_stamps_both_times() -> None:
    taken = claim(HELD, "me_5678", 15, T0)
    assert taken == LeaseRecord("me_5678", 15, "2026-01-02T03:04:05.678901Z", "2026-01-02T03:04:05.678901Z", 4)
    assert claim(None, "me_5678", 15, T0).transitions == 0  # a new Lease


def test_renewing_keeps_acquire_time_and_transitions_and_moves_renew_time() -> None:
    mine = claim(HELD, "me", 15, T0)
    later = claim(mine, "me", 15, T0 + timedelta(seconds=2))
    assert later.acquire_time == mine.acquire_time and later.transitions == mine.transitions
    assert later.renew_time == "2026-01-02T03:04:07.678901Z"


def test_a_released_lease_has_no_holder_and_a_one_second_duration() -> None:
    gone = released(claim(HELD, "me", 15, T0), T0)
    assert gone.holder == "" and gone.duration == 1 and gone.transitions == 4
    assert not held_by_other(Observation(gone, 100.0), "standby", 100.0)


def test_identity_is_the_pod_name_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "ft-flextrain-7d9f-abcde")
    one, two = leader.identity(), leader.identity()
    assert one.startswith("ft-flextrain-7d9f-abcde_") and two.startswith("ft-flextrain-7d9f-abcde_")
    assert one != two  # a restarted container is a new candidate


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLEXTRAIN_OPERATOR_LEASE_DURATION": "0"}, "LEASE_DURATION must be >= 1"),
        ({"FLEXTRAIN_OPERATOR_LEASE_DURATION": "1.5"}, "is not an integer"),
        ({"FLEXTRAIN_OPERATOR_RENEW_DEADLINE": "15"}, "RENEW_DEADLINE=15 must be > 0 and less than"),
        ({"FLEXTRAIN_OPERATOR_RETRY_PERIOD": "10"}, "RETRY_PERIOD=10 must be > 0 and less than"),
        ({"FLEXTRAIN_OPERATOR_RETRY_PERIOD": "-1"}, "RETRY_PERIOD=-1 must be > 0"),
        ({"FLEXTRAIN_OPERATOR_LEADER_ELECTION_LEASE": "Not_A_Name"}, "is not a valid object name"),
        ({"FLEXTRAIN_OPERATOR_LEADER_ELECTION": "maybe"}, "use true or false"),
    ],
)
def test_bad_election_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env(env)


def test_election_settings_default_to_client_gos_timings() -> None:
    settings = OperatorSettings.from_env({"FLEXTRAIN_OPERATOR_LEADER_ELECTION": "true"})
    assert settings.leader_election
    assert (settings.lease_duration, settings.renew_deadline, settings.retry_period) == (15, 10.0, 2.0)
    assert settings.leader_election_lease == "flextrain-operator"
