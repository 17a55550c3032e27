"""Listing cursors and ``limit`` checks for store plug-ins (public).

A store uses these so that its listings refuse a bad ``limit`` or a cursor
they did not make exactly as the built-in stores do: ``ValidationError`` on
the field ``limit`` or ``cursor`` (a 422 in the API). A cursor is URL-safe
base64 of ``prefix + text``; pick a prefix of your own per listing
(``b"mystore/c:"``), so that one listing's cursor is refused by another.
``docs/backends.md`` shows ``list_connections`` written with them.
"""

from __future__ import annotations

from ._paging import (
    bad_cursor,
    check_limit,
    decode_cursor,
    decode_seq_cursor,
    decode_slug_cursor,
    encode_cursor,
)

__all__ = [
    "bad_cursor",
    "check_limit",
    "decode_cursor",
    "decode_seq_cursor",
    "decode_slug_cursor",
    "encode_cursor",
]
