"""Per-replica credentials: every trainer proves which replica it is, and the aggregator
checks it with nothing but the job's token (no table of credentials to share or store).

Three keys, each derived from the one above it with HMAC-SHA256:

- the **job token**: random, in the job's Secret (key ``token``); only the aggregator
  and the operator hold it. It authenticates GetStatus, never training;
- a **tier key** per tier, ``HMAC(job token, job, tier)``: in the same Secret under
  ``tier-<tier>``, handed to that tier's trainer pods only (FLEXTRAIN_TIER_KEY);
- a **replica credential** per replica, ``HMAC(tier key, depth, index)``, which a
  trainer computes from its tier key and sends with every call, beside the identity it
  vouches for: ``<tier>/<depth>/<index>/<mac>``.

The aggregator recomputes the MAC from its job token and refuses a call whose
credential does not verify, or that names another tier, replica or depth than its
credential. A trainer can therefore only ever join, pull and push as itself; a trainer
pod of one tier cannot act as any replica of another tier (it lacks that tier's key).
Within a tier, every pod holds the tier key, because Kubernetes gives every pod of an
Indexed Job the same template (and so the same Secret keys): docs/aggregator.md, "Trust
model".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

#: The scheme of a replica credential in the ``authorization`` metadata.
SCHEME: Final = "Replica"
#: The longest credential read at all (a 63-character tier name, a depth, an index and
#: a 43-character MAC fit well inside).
MAX_CREDENTIAL: Final = 256
#: Bounds of the numbers a credential names (far above anything the API allows).
MAX_DEPTH: Final = 10_000
MAX_INDEX: Final = 1_000_000

_TIER_LABEL: Final = b"flextrain tier key v1"
_REPLICA_LABEL: Final = b"flextrain replica credential v1"


def _mac(key: str, *parts: str | bytes) -> str:
    message = b"\0".join(p if isinstance(p, bytes) else p.encode() for p in parts)
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def tier_key(job_token: str, job: str, tier: str) -> str:
    """The key of tier `tier` of job `job` (43 URL-safe characters)."""
    return _mac(job_token, _TIER_LABEL, job, tier)


def secret_key_of(tier: str) -> str:
    """The key under which the job's Secret holds `tier`'s tier key."""
    return f"tier-{tier}"


@dataclass(frozen=True)
class ReplicaIdentity:
    """What a replica credential vouches for."""

    tier: str
    depth: int
    index: int


def replica_credential(key: str, identity: ReplicaIdentity) -> str:
    """The credential of `identity`, made with its tier's key."""
    mac = _mac(key, _REPLICA_LABEL, str(identity.depth), str(identity.index))
    return f"{identity.tier}/{identity.depth}/{identity.index}/{mac}"


class CredentialVerifier:
    """Checks replica credentials of one job (the aggregator's side)."""

    def __init__(self, job_token: str, job: str, tiers: Collection[str]) -> None:
        self._keys = {tier: tier_key(job_token, job, tier) for tier in tiers}

    def verify(self, credential: str) -> ReplicaIdentity | None:
        """The identity `credential` vouches for, or None when it is malformed, names a
        tier the job lacks or does not verify. Constant time in the MAC."""
        if len(credential) > MAX_CREDENTIAL:
            return None
        parts = credential.split("/")
        if len(parts) != 4:
            return None
        tier, depth, index, _ = parts
        key = self._keys.get(tier)
        if key is None or not (_small(depth, MAX_DEPTH) and _small(index, MAX_INDEX)):
            return None
        identity = ReplicaIdentity(tier, int(depth), int(index))
        expected = replica_credential(key, identity)
        return identity if hmac.compare_digest(expected.encode(), credential.encode()) else None


def _small(text: str, most: int) -> bool:
    """`text` is a canonical decimal number in 0..most."""
    return text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0")) and int(text) <= most
