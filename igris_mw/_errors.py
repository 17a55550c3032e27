"""The igris-mw exception tree.

Every error the library raises on purpose is an ``IgrisError``. Each class
carries the HTTP ``status`` and the snake_case ``code`` that the management
API and the gateway put in ``{"error": {"code", "message"}}``; the CLI prints
the message on one line and exits non-zero. Messages never contain a
credential, a gateway key or a master key.

Foreign errors (sqlite3, aiohttp, psycopg, Vault HTTP) are translated at
exactly one boundary, with ``raise X(...) from exc``.

```
IgrisError
├── ConfigurationError (also ValueError)   bad master key, bad store URL, unknown scheme
├── BadRequest                    400      body is not JSON
├── Unauthorized                  401      no gateway key, malformed, unknown, expired, revoked
├── Forbidden                     403      key lacks scope / connection, connection disabled, Origin
│   ├── UserMismatch                       a key bound to a user sent another X-Igris-User
│   └── UserCredentialMissing              no credential for this user (+ authorizeUrl)
├── NotFound                      404      unknown connection or key
├── Conflict                      409
│   ├── SlugTaken                          create with a slug in use
│   └── VersionConflict                    a guarded update lost a race
├── PayloadTooLarge               413
├── ValidationError (also ValueError) 422  a field is invalid; ``field`` names it
├── UpstreamError                 502      upstream unreachable or broken
├── ServiceUnavailable            503
│   ├── StoreUnavailable                   the store cannot be reached
│   └── CryptoUnavailable                  the crypto provider cannot be reached
├── UpstreamTimeout               504
└── InvalidCiphertext                      (``igris_mw.crypto``) any failure of an envelope
    └── UnknownKeyId                        its key-encryption key is not configured
```
"""

from __future__ import annotations

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
    "UserCredentialMissing",
    "UserMismatch",
    "ValidationError",
    "VersionConflict",
]


class IgrisError(Exception):
    """Base of every error igris-mw raises on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_json(self) -> dict[str, dict[str, str]]:
        """The contract's error body."""
        return {"error": {"code": self.code, "message": self.message}}


class ConfigurationError(IgrisError, ValueError):
    """The configuration is unusable: a master key, a store URL, a scheme."""

    status = 500
    code = "configuration_error"


class BadRequest(IgrisError):
    status = 400
    code = "bad_request"


class Unauthorized(IgrisError):
    status = 401
    code = "unauthorized"


class Forbidden(IgrisError):
    status = 403
    code = "forbidden"


class UserMismatch(Forbidden):
    """A key bound to one end user asked to act as another (``X-Igris-User``)."""

    code = "user_mismatch"


class UserCredentialMissing(Forbidden):
    """A per-user connection holds no credential for this end user.

    For an ``oauth2`` connection ``authorize_url`` is where that user consents;
    it goes into the error body.
    """

    code = "user_credential_missing"

    def __init__(self, message: str, *, authorize_url: str | None = None) -> None:
        super().__init__(message)
        self.authorize_url = authorize_url

    def to_json(self) -> dict[str, dict[str, str]]:
        body = super().to_json()
        if self.authorize_url is not None:
            body["error"]["authorizeUrl"] = self.authorize_url
        return body


class NotFound(IgrisError):
    status = 404
    code = "not_found"


class Conflict(IgrisError):
    status = 409
    code = "conflict"


class SlugTaken(Conflict):
    code = "slug_taken"


class VersionConflict(Conflict):
    code = "version_conflict"


class PayloadTooLarge(IgrisError):
    status = 413
    code = "payload_too_large"


class ValidationError(IgrisError, ValueError):
    """A field is invalid. ``field`` names it (camelCase, as in the API)."""

    status = 422
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UpstreamError(IgrisError):
    status = 502
    code = "upstream_unreachable"


class ServiceUnavailable(IgrisError):
    status = 503
    code = "service_unavailable"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StoreUnavailable(ServiceUnavailable):
    code = "store_unavailable"


class CryptoUnavailable(ServiceUnavailable):
    code = "crypto_unavailable"


class UpstreamTimeout(IgrisError):
    status = 504
    code = "upstream_timeout"


class InvalidCiphertext(IgrisError):
    """An envelope cannot be opened: tampered, truncated, wrong key or binding.

    Deliberately one type for every cause, as in ``cryptography.fernet``, so
    that callers cannot build an oracle out of the difference.
    """

    status = 500
    code = "invalid_ciphertext"


class UnknownKeyId(InvalidCiphertext):
    """The envelope's key-encryption key is not configured. Names the key id."""

    def __init__(self, key_id: str) -> None:
        super().__init__(
            f"the envelope was sealed with key id {key_id!r}, which is not configured; "
            "add that master key back (after the primary) to read it"
        )
        self.key_id = key_id
