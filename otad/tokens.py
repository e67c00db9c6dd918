"""One-time challenge tokens: minted with 192 random bits, stored only as a digest."""

from __future__ import annotations

import hashlib
import secrets

# 24 bytes -> 32 URL-safe characters; the issue floor is 128 bits.
TOKEN_BYTES = 24


def mint() -> tuple[str, bytes]:
    """A fresh token and the digest that the store keeps instead of it."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, digest(token)


def digest(token: str | bytes) -> bytes:
    """SHA-256 of the token; a plain hash suffices because tokens carry 192 bits of entropy."""
    if isinstance(token, str):
        token = token.encode("utf-8")
    return hashlib.sha256(token).digest()
