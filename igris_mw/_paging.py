"""Opaque listing cursors and ``limit`` checks shared by every store.

A cursor is URL-safe base64 (unpadded) of ``prefix + text``; the prefix
names the listing that made it, so a cursor from one listing (or backend)
is refused by another. Each backend keeps its own prefix, so the cursors
it hands out are unchanged by this module's existence.
"""

from __future__ import annotations

import base64
import binascii

from ._errors import ValidationError
from .models import SLUG_RE

__all__ = [
    "bad_cursor",
    "check_limit",
    "decode_cursor",
    "decode_seq_cursor",
    "decode_slug_cursor",
    "encode_cursor",
]


def bad_cursor() -> ValidationError:
    """The one error every listing raises for a cursor it did not make."""
    return ValidationError("cursor", "is not a cursor this listing returned")


def check_limit(limit: int) -> None:
    """Raises:
    ValidationError: ``limit`` is not an integer of at least 1.
    """
    if not isinstance(limit, int) or limit < 1:
        raise ValidationError("limit", "must be a positive integer")


def encode_cursor(prefix: bytes, text: str) -> str:
    """``text`` as an opaque cursor of the listing named by ``prefix``."""
    return base64.urlsafe_b64encode(prefix + text.encode()).decode().rstrip("=")


def decode_cursor(prefix: bytes, cursor: str) -> str:
    """The text ``encode_cursor(prefix, text)`` was given.

    Raises:
        ValidationError: not base64, not UTF-8, or another listing's prefix.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if not raw.startswith(prefix):
            raise ValueError(cursor)
        return raw[len(prefix) :].decode()
    except (ValueError, binascii.Error, UnicodeError):
        raise bad_cursor() from None


def decode_slug_cursor(prefix: bytes, cursor: str) -> str:
    """A connection listing's cursor: the last slug of the previous page.

    Raises:
        ValidationError: not such a cursor, or the text is not a slug.
    """
    slug = decode_cursor(prefix, cursor)
    if not SLUG_RE.match(slug):
        raise bad_cursor()
    return slug


def decode_seq_cursor(prefix: bytes, cursor: str, *, connection: str | None = None) -> int:
    """An audit listing's cursor: the last seq of the previous page.

    With ``connection``, the text is ``"<seq>:<connection>"`` and must name
    that connection, so a cursor cannot be replayed against another chain.

    Raises:
        ValidationError: not such a cursor, or it names another connection.
    """
    seq_text = decode_cursor(prefix, cursor)
    if connection is not None:
        seq_text, _, slug = seq_text.partition(":")
        if slug != connection:
            raise bad_cursor()
    # isascii too: str.isdigit() accepts digits such as "²" that int() refuses.
    if not (seq_text.isascii() and seq_text.isdigit()):
        raise bad_cursor()
    return int(seq_text)
