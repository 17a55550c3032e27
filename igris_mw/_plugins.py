"""The core's historical import path for plug-in loading.

It lives in the public ``igris_mw.plugins``; plug-ins import that.
"""

from __future__ import annotations

from .plugins import (
    CRYPTO,
    DEFAULT_CRYPTO,
    STORES,
    crypto_from_url,
    installed_schemes,
    redact_url,
    store_from_url,
)

__all__ = [
    "CRYPTO",
    "DEFAULT_CRYPTO",
    "STORES",
    "crypto_from_url",
    "installed_schemes",
    "redact_url",
    "store_from_url",
]
