"""The core's historical import path for ``rewrap_all``.

It lives in the public ``igris_mw.crypto``; plug-ins import it from there.
"""

from __future__ import annotations

from .crypto import rewrap_all

__all__ = ["rewrap_all"]
