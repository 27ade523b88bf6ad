"""Replica credentials: each verifies as its own replica only, with nothing but the job
token on the aggregator's side."""

from __future__ import annotations

import pytest

from flextrain.contract.credentials import (
    MAX_CREDENTIAL,
    CredentialVerifier,
    ReplicaIdentity,
    replica_credential,
    secret_key_of,
    tier_key,
)

TOKEN = "job-token"
VERIFIER = CredentialVerifier(TOKEN, "job", ["gpu", "edge"])


def credential(tier: str = "edge", depth: int = 3, index: int = 1, *, token: str = TOKEN, job: str = "job") -> str:
    return replica_credential(tier_key(token, job, tier), ReplicaIdentity(tier, depth, index))


def test_a_credential_verifies_as_the_replica_it_was_made_for() -> None:
    assert VERIFIER.verify(credential()) == ReplicaIdentity("edge", 3, 1)
    assert VERIFIER.verify(credential("gpu", 9, 0)) == ReplicaIdentity("gpu", 9, 0)


def test_tier_keys_differ_by_job_tier_and_token() -> None:
    keys = {tier_key(t, j, n) for t in ("a", "b") for j in ("j1", "j2") for n in ("gpu", "edge")}
    assert len(keys) == 8
    assert secret_key_of("edge") == "tier-edge"


@pytest.mark.parametrize(
    "forged",
    [
        credential(token="guess"),  # another job token
        credential(job="other"),  # another job's key
        credential("cpu"),  # a tier the job lacks
        credential().replace("edge/3/1/", "edge/3/2/"),  # another index, same MAC
        credential().replace("edge/3/1/", "edge/9/1/"),  # another depth, same MAC
        credential().replace("edge/3/1/", "gpu/3/1/"),  # another tier, same MAC
        credential()[:-1],  # a MAC cut short
        credential().replace("/1/", "/01/"),  # non-canonical numbers
        "edge/3/1",
        "edge/x/1/abc",
        "",
        "edge/3/1/" + "A" * MAX_CREDENTIAL,  # over the length bound
    ],
)
def test_anything_else_does_not_verify(forged: str) -> None:
    assert VERIFIER.verify(forged) is None


def test_a_tier_key_makes_credentials_of_its_own_tier_only() -> None:
    edge_key = tier_key(TOKEN, "job", "edge")
    as_gpu = replica_credential(edge_key, ReplicaIdentity("gpu", 9, 0))
    assert VERIFIER.verify(as_gpu) is None
