"""Bearer-token checks for ingestion and scraping."""

from __future__ import annotations

import hmac


def bearer_token_matches(authorization: str | None, expected: str) -> bool:
    """Return whether an ``Authorization`` header carries ``expected``.

    The comparison takes the same time however much of the token matches, so
    that response times do not reveal it.
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return False

    return hmac.compare_digest(token.strip().encode(), expected.encode())
