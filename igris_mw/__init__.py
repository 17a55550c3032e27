"""igris-mw: a credential-injecting gateway for MCP servers.

Mount ``IgrisGateway`` in any ASGI app, or run ``igris-mw serve``.
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
from .crypto import CryptoProvider
from .models import ApiKey, AuditEvent, AuthType, Connection, Page, Scope, Secret
from .storage import Capabilities, Change, Store

__version__ = "0.1.0"

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuthType",
    "BadRequest",
    "Capabilities",
    "Change",
    "ConfigurationError",
    "Conflict",
    "Connection",
    "CryptoProvider",
    "CryptoUnavailable",
    "Forbidden",
    "IgrisError",
    "InvalidCiphertext",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "Scope",
    "Secret",
    "ServiceUnavailable",
    "SlugTaken",
    "Store",
    "StoreUnavailable",
    "Unauthorized",
    "UnknownKeyId",
    "UpstreamError",
    "UpstreamTimeout",
    "ValidationError",
    "VersionConflict",
    "__version__",
]
