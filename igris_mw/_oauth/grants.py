"""Access tokens from stored grants, renewed once across replicas.

A grant (access token, refresh token, expiry) lives in a ``GrantStore`` row with
a ``version``; every write is a compare-and-set on that version. With refresh
token rotation a refresh token may be used exactly once: a second use makes
the server revoke the whole grant (RFC 9700 4.14.2). So a replica that wants
to renew first *claims* the row (status ``refreshing`` with a lease, version
+1); only the replica whose claim landed talks to the token endpoint, then
stores the new tokens (version +1 again). The others, in this process or in
another, wait for that write and use its tokens; while the current access
token is still valid they keep using it instead of waiting. A claim whose
lease ran out (its replica died mid-renewal) may be taken over.

Two kinds of renewal share this: ``RefreshConfig`` (authorization code grants:
the refresh token, rotated) and ``ClientCredentialsConfig`` (a new token for
the client itself; a missing row is created by the first renewal).

- Renewal happens ``renewal_skew(lifetime)`` before expiry; a token is sent
  at the latest ``usable_margin(lifetime)`` before it (while another caller
  renews, the current token keeps serving until then).
- ``invalid_grant`` marks the row ``reauthorization_required``: every replica
  answers ``InvalidGrant`` (502 ``reauthorization_required``) until a new
  consent replaces the row.
- A failed renewal is remembered for ``failure_backoff`` seconds: a burst of
  requests during an outage of the token endpoint makes one request.
- ``drop`` (the upstream answered 401) forgets the token and marks it refused,
  so the next request renews even though the token has not expired.

The warm path is a dict lookup, an identity check and a clock read: no lock,
no store read, no I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Literal, Protocol

import attrs

from igris_mw._oauth.client_credentials import DEFAULT_LIFETIME, renewal_skew, usable_margin
from igris_mw._oauth.errors import GrantMissing, InvalidGrant, OAuthError
from igris_mw._oauth.tokens import ClientAuth, TokenClient, TokenSet
from igris_mw.models import Secret

__all__ = [
    "GrantManager",
    "GrantState",
    "GrantStore",
    "MemoryGrantStore",
    "RefreshConfig",
    "Renewal",
]

GrantStatus = Literal["authorized", "refreshing", "reauthorization_required"]

#: How long a claim to renew holds before another replica may take it over.
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
        """Store ``new`` (at version ``expected_version + 1``) if the stored version is
        ``expected_version`` (0: no row); say whether it was stored."""


class Renewal(Protocol):
    """How a grant gets a new access token."""

    #: A missing row may be created by renewing (no consent needed).
    creates: bool

    async def renew(self, tokens: TokenClient, current: GrantState | None) -> TokenSet:
        """New tokens for the grant ``current``.

        Raises:
            InvalidGrant: the grant cannot be renewed (someone must consent again).
            OAuthError: the token endpoint failed.
        """


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
        self._rows[key] = attrs.evolve(new, version=expected_version + 1)
        return True

    def put(self, key: Hashable, state: GrantState) -> None:
        self._rows[key] = state


@attrs.frozen
class RefreshConfig:
    """Renewal of an authorization-code grant with its refresh token (RFC 6749 6)."""

    token_url: str
    client: ClientAuth
    resource: str | None = None
    scopes: tuple[str, ...] = ()
    creates = False

    async def renew(self, tokens: TokenClient, current: GrantState | None) -> TokenSet:
        if current is None or current.refresh_token is None:
            raise InvalidGrant("the connection's OAuth grant has no refresh token: consent again")
        return await tokens.refresh(
            self.token_url,
            self.client,
            refresh_token=current.refresh_token,
            scopes=self.scopes,
            resource=self.resource,
        )


@attrs.frozen
class _Entry:
    config: Renewal
    token: Secret
    renew_at: float  # wall clock
    expires_at: float  # wall clock


@attrs.frozen
class _Failure:
    config: Renewal
    error: OAuthError
    until: float


class GrantManager:
    """Hands out access tokens of stored grants; renews once, across replicas.

    Args:
        store: the grants.
        tokens: the token client.
        clock: wall clock (compared across replicas; injectable).
        lease: seconds a renewal claim holds.
        failure_backoff: seconds a failed renewal is answered from memory.
        on_refresh: called after each renewal with the key, ``"ok"`` or the
            error, and the new grant (None on failure); must not raise or block.
    """

    def __init__(
        self,
        store: GrantStore,
        tokens: TokenClient,
        *,
        clock: Callable[[], float] = time.time,
        lease: float = LEASE_SECONDS,
        failure_backoff: float = 1.0,
        on_refresh: Callable[[Hashable, OAuthError | None, GrantState | None], None] | None = None,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._clock = clock
        self._lease = lease
        self._backoff = failure_backoff
        self._on_refresh = on_refresh
        self._entries: dict[Hashable, _Entry] = {}
        self._failures: dict[Hashable, _Failure] = {}
        self._refused: dict[Hashable, Secret] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}

    def forget(self, key: Hashable) -> None:
        """Drop what this process remembers of ``key`` (a new consent, a changed connection)."""
        self._entries.pop(key, None)
        self._failures.pop(key, None)
        self._refused.pop(key, None)

    def drop(self, key: Hashable, token: Secret) -> bool:
        """The upstream refused ``token``: renew on the next request (if it is still current)."""
        entry = self._entries.get(key)
        if entry is not None and entry.token == token:
            del self._entries[key]
            self._refused[key] = token
            return True
        return False

    def expires_at(self, key: Hashable) -> float | None:
        """Wall-clock expiry of the token this process holds for ``key``, if any."""
        entry = self._entries.get(key)
        return None if entry is None else entry.expires_at

    async def token(self, key: Hashable, config: Renewal) -> Secret:
        """A valid access token for ``key``.

        Raises:
            InvalidGrant: no grant (and ``config`` cannot create one), or the
                server no longer accepts it.
            OAuthError: the token endpoint failed and no valid token is left.
        """
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry.config is config:
            if now < entry.renew_at:
                return entry.token
            lock = self._locks.get(key)
            if lock is not None and lock.locked() and now < entry.expires_at:
                return entry.token
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            return await self._resolve(key, config)

    async def _resolve(self, key: Hashable, config: Renewal) -> Secret:
        while True:
            state = await self._store.load(key)
            now = self._clock()
            if state is None and not config.creates:
                self._entries.pop(key, None)
                raise GrantMissing(
                    "nobody has authorized this connection yet (oauthStatus pending): "
                    "POST .../oauth/authorize and consent"
                )
            if state is not None and state.status == "reauthorization_required":
                self._entries.pop(key, None)
                raise InvalidGrant(
                    "the connection's OAuth grant is no longer valid "
                    "(reauthorization_required): authorize it again"
                )
            usable = self._usable(key, state, config, now) if state is not None else None
            if usable is not None and now < usable.renew_at:
                self._entries[key] = usable
                self._refused.pop(key, None)
                return usable.token
            failure = self._failures.get(key)
            if failure is not None and failure.config is config and now < failure.until:
                if usable is not None:
                    return usable.token
                raise failure.error
            leased = state is not None and (state.lease_until or 0) > now
            if state is not None and state.status == "refreshing" and leased:
                # Another replica is renewing: keep using a valid token, else wait.
                if usable is not None:
                    return usable.token
                await asyncio.sleep(_POLL)
                continue
            if state is None:
                claim = GrantState(None, None, None, status="refreshing")
                expected = 0
            else:
                claim = attrs.evolve(state, status="refreshing")
                expected = state.version
            claim = attrs.evolve(claim, lease_until=now + self._lease, version=expected + 1)
            if not await self._store.compare_and_set(key, expected, claim):
                continue  # someone else moved first: look again
            return await self._renew(key, config, claim, usable)

    async def _renew(
        self, key: Hashable, config: Renewal, claim: GrantState, usable: _Entry | None
    ) -> Secret:
        current = claim if claim.refresh_token is not None or claim.access_token else None
        try:
            tokens = await config.renew(self._tokens, current)
        except InvalidGrant as exc:
            dead = attrs.evolve(
                claim, status="reauthorization_required", access_token=None, refresh_token=None
            )
            await self._settle(key, claim, dead)
            self._entries.pop(key, None)
            self._notify(key, exc, None)
            raise
        except OAuthError as exc:
            # Release the claim, tokens unchanged: a refresh token that failed
            # for another reason than invalid_grant was not consumed.
            await self._settle(key, claim, attrs.evolve(claim, status="authorized"))
            self._failures[key] = _Failure(config, exc, self._clock() + self._backoff)
            self._notify(key, exc, None)
            if usable is not None and self._clock() < usable.expires_at:
                return usable.token
            raise
        except BaseException:
            # Anything else (a bug, a cancelled request): release the claim
            # rather than leave the others waiting for the lease to run out.
            await asyncio.shield(self._settle(key, claim, attrs.evolve(claim, status="authorized")))
            raise
        self._failures.pop(key, None)
        self._refused.pop(key, None)
        new = GrantState.from_tokens(tokens, version=claim.version + 1)
        stored = await self._store.compare_and_set(key, claim.version, new)
        self._notify(key, None, new)
        entry = self._usable(key, new, config, self._clock())
        if stored and entry is not None:
            self._entries[key] = entry
        # Not stored: our lease ran out and another replica took over. Its
        # tokens win for everyone else; ours were issued and are valid, so
        # this request may still use them.
        return tokens.access_token

    async def _settle(self, key: Hashable, claim: GrantState, new: GrantState) -> None:
        await self._store.compare_and_set(
            key, claim.version, attrs.evolve(new, version=claim.version + 1, lease_until=None)
        )

    def _usable(
        self, key: Hashable, state: GrantState, config: Renewal, now: float
    ) -> _Entry | None:
        token = state.access_token
        if token is None or state.status == "reauthorization_required":
            return None
        refused = self._refused.get(key)
        if refused is not None and refused == token:
            return None
        expires_at = state.expires_at if state.expires_at is not None else now + DEFAULT_LIFETIME
        lifetime = state.lifetime if state.lifetime is not None else DEFAULT_LIFETIME
        # The last moment a token is sent: a margin before the stated expiry,
        # for the whole-second rounding of exp and the request's time in flight.
        last = expires_at - usable_margin(lifetime)
        if now >= last:
            return None
        return _Entry(config, token, expires_at - renewal_skew(lifetime), last)

    def _notify(self, key: Hashable, error: OAuthError | None, state: GrantState | None) -> None:
        if self._on_refresh is not None:
            self._on_refresh(key, error, state)
