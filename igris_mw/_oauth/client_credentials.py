"""A per-connection cache of client-credentials tokens (RFC 6749 4.4).

A token is renewed ``skew`` seconds before it expires, with ``skew = min(60 s,
max(1 s, 10 % of its lifetime), half its lifetime)``: a 1-hour token is renewed
at 59 minutes, a 100-second one at 90 s, a 2-second one at 1 s. The 1 s floor is
there because servers write ``exp`` in whole seconds, rounded down: a token can
be up to a second shorter-lived than its ``expires_in`` says.

At most one token request per connection is in flight in a process: the
first caller renews, the others wait for its answer; while a token is
still valid inside its renewal window, callers that find a renewal already in
flight keep using it instead of waiting. When a token request fails, the
error is remembered for ``failure_backoff`` seconds, so that a burst of requests
during an outage of the authorization server makes one token request, not one
each. An upstream 401 drops the token (``drop``) so the next caller gets a new one.

The warm path is a dict lookup and a clock read: no lock, no I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Literal

import attrs

from igris_mw._oauth.errors import OAuthError
from igris_mw._oauth.tokens import ClientAuth, TokenClient, TokenSet
from igris_mw.models import Secret

__all__ = ["ClientCredentialsCache", "ClientCredentialsConfig", "renewal_skew"]

#: Without ``expires_in`` a token is used this long, then renewed.
DEFAULT_LIFETIME = 300.0

RefreshResult = Literal["ok", "error"]


def renewal_skew(lifetime: float) -> float:
    """Seconds before expiry at which a token of ``lifetime`` seconds is renewed."""
    return min(60.0, max(1.0, 0.1 * lifetime), 0.5 * lifetime)


@attrs.frozen
class ClientCredentialsConfig:
    """What a connection's token request carries."""

    token_url: str
    client: ClientAuth
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    resource: str | None = None

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


@attrs.frozen
class _Entry:
    config: ClientCredentialsConfig
    token: Secret
    renew_at: float  # monotonic
    expires_at: float  # monotonic
    wall_expires_at: float | None


@attrs.frozen
class _Failure:
    config: ClientCredentialsConfig
    error: OAuthError
    until: float  # monotonic


class ClientCredentialsCache:
    """Tokens per connection key; one renewal at a time per key.

    Args:
        tokens: the token client.
        clock: monotonic clock (injectable for tests).
        failure_backoff: seconds a failed token request is answered from memory.
        on_refresh: called after each token request with the key and its result
            (metrics, audit); must not raise or block.
    """

    def __init__(
        self,
        tokens: TokenClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        failure_backoff: float = 1.0,
        on_refresh: Callable[[Hashable, RefreshResult, OAuthError | None], None] | None = None,
    ) -> None:
        self._tokens = tokens
        self._clock = clock
        self._backoff = failure_backoff
        self._on_refresh = on_refresh
        self._entries: dict[Hashable, _Entry] = {}
        self._failures: dict[Hashable, _Failure] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    async def token(self, key: Hashable, config: ClientCredentialsConfig) -> Secret:
        """A valid access token for ``key``, requesting one only when needed.

        Raises:
            OAuthError: the authorization server failed or refused, and no valid
                token is left.
        """
        now = self._clock()
        entry = self._entries.get(key)
        # Identity first: the resolver hands the same config object until the
        # connection changes, so the warm path skips comparing the secret.
        if entry is not None and (entry.config is config or entry.config == config):
            if now < entry.renew_at:
                return entry.token
            lock = self._locks.get(key)
            if lock is not None and lock.locked() and now < entry.expires_at:
                return entry.token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is not None and entry.config == config and now < entry.renew_at:
                return entry.token
            failure = self._failures.get(key)
            if failure is not None and failure.config == config and now < failure.until:
                if entry is not None and entry.config == config and now < entry.expires_at:
                    return entry.token
                raise failure.error
            return await self._renew(key, config, entry)

    async def _renew(
        self, key: Hashable, config: ClientCredentialsConfig, entry: _Entry | None
    ) -> Secret:
        try:
            tokens = await self._tokens.client_credentials(
                config.token_url,
                config.client,
                scopes=config.scopes,
                audience=config.audience,
                resource=config.resource,
            )
        except OAuthError as exc:
            self._failures[key] = _Failure(config, exc, self._clock() + self._backoff)
            self._notify(key, "error", exc)
            if entry is not None and entry.config == config and self._clock() < entry.expires_at:
                return entry.token
            raise
        self._failures.pop(key, None)
        self._entries[key] = self._entry(config, tokens)
        self._notify(key, "ok", None)
        return tokens.access_token

    def _entry(self, config: ClientCredentialsConfig, tokens: TokenSet) -> _Entry:
        now = self._clock()
        lifetime = tokens.expires_in if tokens.expires_in is not None else DEFAULT_LIFETIME
        return _Entry(
            config=config,
            token=tokens.access_token,
            renew_at=now + lifetime - renewal_skew(lifetime),
            expires_at=now + lifetime,
            wall_expires_at=tokens.expires_at,
        )

    def _notify(self, key: Hashable, result: RefreshResult, error: OAuthError | None) -> None:
        if self._on_refresh is not None:
            self._on_refresh(key, result, error)

    def drop(self, key: Hashable, token: Secret) -> bool:
        """Forget ``key``'s token if it is still ``token`` (the upstream refused it).

        Comparing first keeps a late 401 for an old token from dropping the
        fresh token another request just obtained.
        """
        entry = self._entries.get(key)
        if entry is not None and entry.token == token:
            del self._entries[key]
            return True
        return False

    def forget(self, key: Hashable) -> None:
        """Forget everything about ``key`` (the connection changed or went away)."""
        self._entries.pop(key, None)
        self._failures.pop(key, None)

    def expires_at(self, key: Hashable) -> float | None:
        """Wall-clock expiry of ``key``'s cached token, if any."""
        entry = self._entries.get(key)
        return None if entry is None else entry.wall_expires_at
