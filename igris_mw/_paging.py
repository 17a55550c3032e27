"""The core's historical import path for the paging helpers.

They live in the public ``igris_mw.paging``; plug-ins import that.
"""

from __future__ import annotations

from .paging import (
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
