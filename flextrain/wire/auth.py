"""What every RPC carries to authenticate: the job token (``Bearer``: GetStatus, for
the operator and tools) or a trainer's replica credential (``Replica``; see
flextrain.contract.credentials), in the ``authorization`` metadata."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from typing import Final

from flextrain.contract.credentials import SCHEME as REPLICA_SCHEME

#: gRPC metadata key carrying "Bearer <token>" or "Replica <credential>".
METADATA_KEY: Final[str] = "authorization"
#: Trailing metadata key with the machine-readable reason of a refused call (a
#: ``flextrain.contract.refusals.Reason`` value such as "stale_round"), beside the
#: human-readable status message.
REASON_KEY: Final[str] = "flextrain-reason"
_SCHEME: Final[str] = "Bearer "
_REPLICA: Final[str] = REPLICA_SCHEME + " "


def new_token() -> str:
    """A fresh random per-job token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates with the job token `token`."""
    return ((METADATA_KEY, _SCHEME + token),)


def replica_metadata(credential: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates a trainer with its replica credential."""
    return ((METADATA_KEY, _REPLICA + credential),)


def _presented(received: Iterable[tuple[str, str | bytes]] | None) -> str:
    for key, value in received or ():
        if key == METADATA_KEY:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return ""


def token_matches(received: Iterable[tuple[str, str | bytes]] | None, token: str) -> bool:
    """True when the call metadata carries exactly `token` (constant-time comparison)."""
    presented = _presented(received)
    if not presented.startswith(_SCHEME):
        # Still compare, so a missing header costs the same as a wrong one.
        hmac.compare_digest(token.encode(), token.encode()[::-1])
        return False
    return hmac.compare_digest(presented[len(_SCHEME) :].encode(), token.encode())


def replica_credential_of(received: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The replica credential the call metadata carries, None for none."""
    presented = _presented(received)
    return presented[len(_REPLICA) :] if presented.startswith(_REPLICA) else None
