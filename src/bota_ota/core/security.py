"""Secrets: random bearer tokens (stored as SHA-256) and argon2 password hashes."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def new_token(prefix: str) -> str:
    """A bearer secret like ``bota_at_<43 url-safe chars>``; the prefix tells people what it is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is safe here (no brute force of the input space);
    # it also keeps the per-request lookup of a device token cheap.
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_password() -> str:
    return secrets.token_urlsafe(15)


# Claim codes are read off a label or a screen and typed in: no 0/O, 1/I/L.
CLAIM_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"


def new_claim_code() -> str:
    raw = "".join(secrets.choice(CLAIM_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def hash_claim_code(code: str) -> str:
    """Codes compare case-insensitively and without dashes or spaces."""
    return hash_token(code.strip().upper().replace("-", "").replace(" ", ""))
