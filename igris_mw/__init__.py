"""igris-mw: a credential-injecting gateway for MCP servers.

Mount ``IgrisGateway`` in any ASGI app, or run ``igris-mw serve``.

Public modules: this package's names, ``errors``, ``models``, ``storage``,
``crypto``, ``paging``, ``plugins``, ``client``, ``cli`` and ``testing``.
Modules whose name starts with ``_`` are internal and may change in any
release; a store or crypto plug-in needs none of them (``docs/backends.md``).
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
from ._version import __version__
from .crypto import CryptoProvider
from .models import ApiKey, AuditEvent, AuthType, Connection, Page, Scope, Secret
from .storage import Capabilities, Change, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._gateway import IgrisGateway
    from .client import AsyncIgrisClient, IgrisClient, IssuedApiKey, McpConfig


def __getattr__(name: str) -> object:
    # The gateway and the SDK pull in aiohttp/httpx: load them on first use
    # so that `import igris_mw` stays cheap.
    if name == "IgrisGateway":
        from ._gateway import IgrisGateway

        return IgrisGateway
    if name in ("IgrisClient", "AsyncIgrisClient", "IssuedApiKey", "McpConfig"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'igris_mw' has no attribute {name!r}")


__all__ = [
    "ApiKey",
    "AsyncIgrisClient",
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
    "IgrisClient",
    "IgrisError",
    "IgrisGateway",
    "InvalidCiphertext",
    "IssuedApiKey",
    "McpConfig",
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
