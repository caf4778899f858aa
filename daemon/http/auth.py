"""The one bearer-token check, for the API's guard and the dashboard's page.

Called on uvicorn's event loop for every request; pure and cheap. The comparison is constant
time so that a wrong token's length or prefix cannot be learnt from response times.
"""

from __future__ import annotations

import hmac

__all__ = ["UNAUTHORIZED_DETAIL", "bearer_ok"]

UNAUTHORIZED_DETAIL = "missing or wrong bearer token (Authorization: Bearer <token>)"


def bearer_ok(token: str | None, authorization: str | None) -> bool:
    """True when no token is configured or ``authorization`` is ``Bearer <token>``."""
    if token is None:
        return True
    given = (authorization or "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())
