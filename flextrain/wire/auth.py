"""The per-job token every RPC carries, and its constant-time check."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from typing import Final

#: gRPC metadata key carrying "Bearer <token>".
METADATA_KEY: Final[str] = "authorization"
#: Trailing metadata key with the machine-readable reason of a refused call (a
#: ``flextrain.contract.refusals.Reason`` value such as "stale_round"), beside the
#: human-readable status message.
REASON_KEY: Final[str] = "flextrain-reason"
_SCHEME: Final[str] = "Bearer "


def new_token() -> str:
    """A fresh random per-job token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates with `token`."""
    return ((METADATA_KEY, _SCHEME + token),)


def token_matches(received: Iterable[tuple[str, str | bytes]] | None, token: str) -> bool:
    """True when the call metadata carries exactly `token` (constant-time comparison)."""
    presented = ""
    for key, value in received or ():
        if key == METADATA_KEY:
            presented = value.decode() if isinstance(value, bytes) else value
            break
    if not presented.startswith(_SCHEME):
        # Still compare, so a missing header costs the same as a wrong one.
        hmac.compare_digest(token.encode(), token.encode()[::-1])
        return False
    return hmac.compare_digest(presented[len(_SCHEME) :].encode(), token.encode())
