"""Gateway API keys: ``ig_`` + base62 random (>= 160 bits) + base62 CRC32.

Like GitHub's tokens: the checksum lets a malformed or mistyped key be
refused without a store read. Only SHA-256(key) is stored.

Layout (39 characters)::

    ig_ | 30 base62 chars from ``secrets`` (log2(62**30) ~ 178.6 bits)
        | 6 base62 chars: CRC32 of the ``ig_`` + random part, zero-padded
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
import zlib

__all__ = [
    "KEY_LENGTH",
    "PREFIX",
    "bearer_token",
    "generate_key",
    "hash_key",
    "hashes_equal",
    "is_well_formed",
    "new_key_id",
]

PREFIX = "ig_"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
RANDOM_LENGTH = 30
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + RANDOM_LENGTH + CHECKSUM_LENGTH
# Prefix, length and alphabet in one C-level match (this runs on every request).
_SHAPE = re.compile(rf"ig_[0-9A-Za-z]{{{RANDOM_LENGTH + CHECKSUM_LENGTH}}}")


def _base62(value: int, width: int) -> str:
    digits = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits))


def _checksum(body: str) -> str:
    # 62**6 > 2**32, so six digits always hold a CRC32.
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    """A new ``ig_`` key (30 base62 chars of randomness + 6 of CRC32)."""
    body = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Prefix, alphabet, length and checksum are right (constant work, no store)."""
    if not isinstance(key, str) or len(key) != KEY_LENGTH or not _SHAPE.fullmatch(key):
        return False
    body, check = key[:-CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    return hmac.compare_digest(_checksum(body), check)


def hash_key(key: str) -> bytes:
    """SHA-256 of the key's UTF-8 bytes (32 bytes)."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def hashes_equal(a: bytes, b: bytes) -> bool:
    """Compare two key hashes in constant time."""
    return hmac.compare_digest(a, b)


def new_key_id() -> str:
    """A public, non-secret id for a key record, e.g. ``key_3f9a...``."""
    return "key_" + secrets.token_hex(8)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``.

    The scheme is case-insensitive (RFC 9110); surrounding blanks are ignored.
    The one parser for the gateway path and the management API.
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
