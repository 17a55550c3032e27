"""Client credentials (RFC 6749 4.4): the token request of a connection, and when to renew.

A token is renewed ``skew`` seconds before it expires, with ``skew = min(60 s,
max(2 s, 10 % of its lifetime), half its lifetime)``: a 1-hour token is renewed
at 59 minutes, a 100-second one at 90 s, a 10-second one at 8 s, a 2-second one
at 1 s. Lifetimes count from when the token request was sent. A token is not
sent in the last ``min(1.5 s, half)`` of its lifetime, even while another
caller is still renewing it (callers then wait for the new token), because
servers write ``exp`` in whole seconds, rounded down: a token can be up to a
second shorter-lived than its ``expires_in`` says, and a request needs time
to reach the upstream.

The tokens themselves are held by ``grants.GrantManager`` like any grant: one
renewal at a time per connection in a process, and across replicas through
the store (the first replica to renew stores the sealed token; the others use
it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from igris_mw._oauth.tokens import ClientAuth, TokenClient, TokenSet
from igris_mw.models import Secret

__all__ = ["DEFAULT_LIFETIME", "ClientCredentialsConfig", "renewal_skew", "usable_margin"]

#: Without ``expires_in`` a token is used this long, then renewed.
DEFAULT_LIFETIME = 300.0


def renewal_skew(lifetime: float) -> float:
    """Seconds before expiry at which a token of ``lifetime`` seconds is renewed."""
    return min(60.0, max(2.0, 0.1 * lifetime), 0.5 * lifetime)


def usable_margin(lifetime: float) -> float:
    """Seconds before expiry after which a token is no longer sent: min(1.5 s, 50 %)."""
    return min(1.5, 0.5 * lifetime)


@attrs.frozen
class ClientCredentialsConfig:
    """What a connection's token request carries."""

    token_url: str
    client: ClientAuth
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    resource: str | None = None

    #: A grant store may create the row by renewing: no consent is needed.
    creates = True

    async def renew(self, tokens: TokenClient, current: object = None) -> TokenSet:
        """A new token for the client itself (``current`` is not needed)."""
        return await tokens.client_credentials(
            self.token_url,
            self.client,
            scopes=self.scopes,
            audience=self.audience,
            resource=self.resource,
        )

    @classmethod
    def from_oauth(cls, oauth: Mapping[str, Any], secret: Secret | None) -> ClientCredentialsConfig:
        """From a connection's checked ``oauth`` object and its client secret."""
        return cls(
            token_url=str(oauth["tokenUrl"]),
            client=ClientAuth.from_oauth(oauth, secret),
            scopes=tuple(oauth.get("scopes", ())),
            audience=oauth.get("audience"),
            resource=oauth.get("resource"),
        )
