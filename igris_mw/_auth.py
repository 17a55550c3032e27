"""Gateway API keys: ``ig_`` + base62 random (>= 160 bits) + base62 CRC32.

Like GitHub's tokens: the checksum lets a malformed or mistyped key be
refused without a store read. Only SHA-256(key) is stored.

SKELETON: signatures are the agreed interface; bodies are being written.
"""

from __future__ import annotations

__all__ = ["PREFIX", "generate_key", "hash_key", "is_well_formed", "new_key_id"]

PREFIX = "ig_"


def generate_key() -> str:
    """A new ``ig_`` key (30 base62 chars of randomness + 6 of CRC32)."""
    raise NotImplementedError


def is_well_formed(key: str) -> bool:
    """Prefix, alphabet, length and checksum are right (constant work, no store)."""
    raise NotImplementedError


def hash_key(key: str) -> bytes:
    """SHA-256 of the key's UTF-8 bytes (32 bytes)."""
    raise NotImplementedError


def new_key_id() -> str:
    """A public, non-secret id for a key record, e.g. ``key_3f9a...``."""
    raise NotImplementedError
