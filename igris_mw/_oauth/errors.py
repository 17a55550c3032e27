"""The OAuth client's errors, under the igris-mw tree.

```
UpstreamError (502)
└── OAuthError                    oauth_error: the authorization server failed or refused
    ├── InvalidGrant              reauthorization_required: the grant is gone (invalid_grant)
    │   └── GrantMissing          ... or was never given (nobody consented yet)
    └── DiscoveryError            oauth_discovery_failed: no usable metadata
BadRequest (400)
└── InvalidAuthorizationResponse  oauth_callback_invalid: bad state or iss
```

Messages name the endpoint's host and the RFC 6749 ``error`` code at most: never a
token, a client secret, a code, a verifier or the server's free-text
``error_description`` (which may echo what it was sent).
"""

from __future__ import annotations

import re

from igris_mw._errors import BadRequest, UpstreamError

__all__ = [
    "DiscoveryError",
    "GrantMissing",
    "InvalidAuthorizationResponse",
    "InvalidGrant",
    "OAuthError",
]

_ERROR_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def safe_error_code(value: object) -> str | None:
    """An RFC 6749 ``error`` value fit for a message, or None (it is attacker-chosen text)."""
    if isinstance(value, str) and _ERROR_CODE.fullmatch(value):
        return value
    return None


class OAuthError(UpstreamError):
    """The authorization server was unreachable, broken, or refused the request."""

    code = "oauth_error"
    #: (slug, user) of the consent flow this error ended, when there was one.
    flow: tuple[str, str] | None = None

    def __init__(self, message: str, *, error: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        #: The server's RFC 6749 ``error`` code, when it sent a well-formed one.
        self.error = error


class InvalidGrant(OAuthError):
    """The grant (refresh token or code) is no longer valid: someone must consent again."""

    code = "reauthorization_required"


class GrantMissing(InvalidGrant):
    """Nobody has consented yet: there is no grant at all."""


class DiscoveryError(OAuthError):
    """The protected resource or authorization server metadata is missing or unusable."""

    code = "oauth_discovery_failed"


class InvalidAuthorizationResponse(BadRequest):
    """The redirect back from the authorization server cannot be accepted."""

    code = "oauth_callback_invalid"
    #: (slug, user) of the consent flow this error ended, when there was one.
    flow: tuple[str, str] | None = None
