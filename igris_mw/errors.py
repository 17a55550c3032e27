"""The exception tree, public: what a store or crypto plug-in raises and a client catches.

Every error igris-mw raises on purpose is an ``IgrisError`` with the HTTP
``status`` and the snake_case ``code`` of its JSON error body (the tree is
drawn in ``igris_mw._errors``, where the classes live; ``docs/errors.md``
lists every code with its status and meaning). A plug-in translates its
driver's errors into these at one boundary, ``raise StoreUnavailable(...)
from exc``, and never puts a password, token or key in a message.
"""

from __future__ import annotations

from ._errors import (
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
