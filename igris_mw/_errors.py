"""The core's historical import path for the exception tree.

The classes live in the public ``igris_mw.errors``; core modules still
import them from here. Plug-ins and users import ``igris_mw.errors``.
"""

from __future__ import annotations

from .errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    CryptoUnavailable,
    Forbidden,
    IgrisError,
    InvalidCiphertext,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    SlugTaken,
    StoreUnavailable,
    Unauthorized,
    UnknownKeyId,
    UpstreamError,
    UpstreamTimeout,
    ValidationError,
    VersionConflict,
)

__all__ = [
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "CryptoUnavailable",
    "Forbidden",
    "IgrisError",
    "InvalidCiphertext",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "SlugTaken",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownKeyId",
    "UpstreamError",
    "UpstreamTimeout",
    "ValidationError",
    "VersionConflict",
]
