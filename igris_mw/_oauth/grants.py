"""Access tokens from a stored authorization-code grant, refreshed safely across replicas.

A grant (access token, refresh token, expiry) lives in a ``GrantStore`` row with
a ``version``; every write is a compare-and-set on that version. With refresh
token rotation, a refresh token may be used exactly once: a second use makes
the server revoke the whole grant (RFC 9700 4.14.2). So a replica that wants
to refresh first *claims* the row (status ``refreshing`` with a lease, version
+1); only the replica whose claim landed talks to the token endpoint, then
stores the rotated tokens (version +1 again). Others, in this process or in
another, wait for that write and use its tokens; while the current access
token is still valid they keep using it instead of waiting. A claim whose
lease ran out (its replica died mid-refresh) may be taken over.

``invalid_grant`` marks the row ``reauthorization_required``: every replica
answers ``InvalidGrant`` (502 ``reauthorization_required``) until a new
consent replaces the row.

Renewal uses the client-credentials skew (``renewal_skew``). The warm path is a
dict lookup and a clock read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Literal, Protocol

import attrs

from igris_mw._oauth.client_credentials import DEFAULT_LIFETIME, renewal_skew
from igris_mw._oauth.errors import InvalidGrant, OAuthError
from igris_mw._oauth.tokens import ClientAuth, TokenClient, TokenSet
from igris_mw.models import Secret

__all__ = ["GrantManager", "GrantState", "GrantStore", "MemoryGrantStore", "RefreshConfig"]

GrantStatus = Literal["authorized", "refreshing", "reauthorization_required"]

#: How long a claim to refresh holds before another replica may take it over.
LEASE_SECONDS = 30.0
_POLL = 0.05


@attrs.frozen
class GrantState:
    """One grant as stored; ``expires_at`` and ``lease_until`` are wall-clock seconds."""

    access_token: Secret | None
    refresh_token: Secret | None
    expires_at: float | None
    status: GrantStatus = "authorized"
    version: int = 0
    lease_until: float | None = None
    #: The access token's ``expires_in`` (seconds), for the renewal skew.
    lifetime: float | None = None

    @classmethod
    def from_tokens(cls, tokens: TokenSet, *, version: int = 0) -> GrantState:
        return cls(
            tokens.access_token,
            tokens.refresh_token,
            tokens.expires_at,
            version=version,
            lifetime=tokens.expires_in,
        )


class GrantStore(Protocol):
    """Where grants live; the one primitive is a compare-and-set on ``version``."""

    async def load(self, key: Hashable) -> GrantState | None:
        """The grant for ``key``, or None."""

    async def compare_and_set(self, key: Hashable, expected_version: int, new: GrantState) -> bool:
        """Store ``new`` if the stored version is ``expected_version``; say whether it was."""


class MemoryGrantStore:
    """A ``GrantStore`` in a dict (tests, and a single process without a store)."""

    def __init__(self) -> None:
        self._rows: dict[Hashable, GrantState] = {}

    async def load(self, key: Hashable) -> GrantState | None:
        return self._rows.get(key)

    async def compare_and_set(self, key: Hashable, expected_version: int, new: GrantState) -> bool:
        current = self._rows.get(key)
        if (current.version if current is not None else 0) != expected_version:
            return False
        self._rows[key] = new
        return True

    def put(self, key: Hashable, state: GrantState) -> None:
        self._rows[key] = state


@attrs.frozen
class RefreshConfig:
    """What a refresh request carries for one connection (and user)."""

    token_url: str
    client: ClientAuth
    resource: str | None = None
    scopes: tuple[str, ...] = ()


@attrs.frozen
class _Entry:
    token: Secret
    renew_at: float  # wall clock
    expires_at: float  # wall clock


class GrantManager:
    """Hands out access tokens of stored grants; refreshes once, across replicas.

    Args:
        store: the grants.
        tokens: the token client.
        clock: wall clock (shared meaning across replicas; injectable).
        lease: seconds a refresh claim holds.
        on_refresh: called after each refresh with the key and its result.
    """

    def __init__(
        self,
        store: GrantStore,
        tokens: TokenClient,
        *,
        clock: Callable[[], float] = time.time,
        lease: float = LEASE_SECONDS,
        on_refresh: Callable[[Hashable, str, OAuthError | None], None] | None = None,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._clock = clock
        self._lease = lease
        self._on_refresh = on_refresh
        self._entries: dict[Hashable, _Entry] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    def forget(self, key: Hashable) -> None:
        """Drop the in-memory token (a new consent, or the connection changed)."""
        self._entries.pop(key, None)

    def drop(self, key: Hashable, token: Secret) -> bool:
        """The upstream refused ``token``: forget it if it is still the cached one."""
        entry = self._entries.get(key)
        if entry is not None and entry.token == token:
            del self._entries[key]
            return True
        return False

    async def token(self, key: Hashable, config: RefreshConfig) -> Secret:
        """A valid access token for ``key``.

        Raises:
            InvalidGrant: no grant, or the server no longer accepts it.
            OAuthError: the token endpoint failed and no valid token is left.
        """
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry.renew_at:
            return entry.token
        lock = self._locks.setdefault(key, asyncio.Lock())
        if entry is not None and lock.locked() and now < entry.expires_at:
            return entry.token
        async with lock:
            return await self._resolve(key, config)

    async def _resolve(self, key: Hashable, config: RefreshConfig) -> Secret:
        while True:
            state = await self._store.load(key)
            now = self._clock()
            if state is None or state.status == "reauthorization_required":
                self._entries.pop(key, None)
                raise InvalidGrant(
                    "the connection's OAuth grant needs a new consent (reauthorization_required)"
                )
            usable = self._usable(state, now)
            if usable is not None and now < usable.renew_at:
                self._entries[key] = usable
                return usable.token
            if state.status == "refreshing" and (state.lease_until or 0) > now:
                # Another replica is refreshing: keep using a valid token, else wait.
                if usable is not None:
                    return usable.token
                await asyncio.sleep(_POLL)
                continue
            claim = attrs.evolve(
                state, status="refreshing", version=state.version + 1, lease_until=now + self._lease
            )
            if not await self._store.compare_and_set(key, state.version, claim):
                continue  # someone else moved first: look again
            return await self._refresh(key, config, claim, usable)

    async def _refresh(
        self, key: Hashable, config: RefreshConfig, claim: GrantState, usable: _Entry | None
    ) -> Secret:
        if claim.refresh_token is None:
            await self._settle(key, claim, attrs.evolve(claim, status="reauthorization_required"))
            raise InvalidGrant("the connection's OAuth grant has no refresh token: consent again")
        try:
            tokens = await self._tokens.refresh(
                config.token_url,
                config.client,
                refresh_token=claim.refresh_token,
                scopes=config.scopes,
                resource=config.resource,
            )
        except InvalidGrant as exc:
            await self._settle(key, claim, attrs.evolve(claim, status="reauthorization_required"))
            self._entries.pop(key, None)
            self._notify(key, "reauthorization_required", exc)
            raise
        except OAuthError as exc:
            # Release the claim with the tokens unchanged: the refresh token was
            # not consumed (or we cannot know; the next attempt will tell).
            await self._settle(key, claim, attrs.evolve(claim, status="authorized"))
            self._notify(key, "error", exc)
            if usable is not None and self._clock() < usable.expires_at:
                return usable.token
            raise
        new = GrantState.from_tokens(tokens, version=claim.version + 1)
        if not await self._store.compare_and_set(key, claim.version, new):
            # Our lease ran out and another replica took over: its tokens win;
            # ours were issued and are valid, so this request may still use them.
            self._notify(key, "ok", None)
            return tokens.access_token
        self._notify(key, "ok", None)
        entry = self._usable(new, self._clock())
        if entry is not None:
            self._entries[key] = entry
        return tokens.access_token

    async def _settle(self, key: Hashable, claim: GrantState, new: GrantState) -> None:
        await self._store.compare_and_set(
            key, claim.version, attrs.evolve(new, version=claim.version + 1, lease_until=None)
        )

    def _usable(self, state: GrantState, now: float) -> _Entry | None:
        if state.access_token is None:
            return None
        expires_at = state.expires_at if state.expires_at is not None else now + DEFAULT_LIFETIME
        if now >= expires_at:
            return None
        lifetime = state.lifetime if state.lifetime is not None else DEFAULT_LIFETIME
        return _Entry(state.access_token, expires_at - renewal_skew(lifetime), expires_at)

    def _notify(self, key: Hashable, result: str, error: OAuthError | None) -> None:
        if self._on_refresh is not None:
            self._on_refresh(key, result, error)
