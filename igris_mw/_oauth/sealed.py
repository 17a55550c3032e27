"""Grants in the igris-mw store, their tokens sealed like credentials.

``SealedGrantStore`` is the ``GrantStore`` the gateway uses: keys are
``(slug, user)`` (``user=""`` for a connection's own grant), rows are
``OAuthGrant``s, and the access and refresh tokens travel only as an envelope
of the crypto provider, bound to ``(slug, user)`` so that a row copied onto
another connection or user does not open. A row whose envelope does not open
(a master key gone) reads as a grant without tokens: client credentials then
get a new token, an authorization-code grant needs a new consent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from datetime import UTC, datetime

from igris_mw._errors import InvalidCiphertext
from igris_mw._oauth.grants import GrantState, GrantStatus
from igris_mw.crypto import CryptoProvider, binding
from igris_mw.models import OAuthGrant, Secret, utcnow
from igris_mw.storage import Store

__all__ = ["SealedGrantStore", "grant_binding"]


def grant_binding(slug: str, user: str) -> bytes:
    """The associated data of a grant's envelope: its connection and user."""
    return binding(slug, 0, user, "oauth_grant")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _seconds(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class SealedGrantStore:
    """A ``GrantStore`` over ``Store.get_oauth_grant`` / ``put_oauth_grant``."""

    def __init__(
        self, store: Store, crypto: CryptoProvider, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock
        # The last envelope made or opened per key, so that a write that keeps
        # the same tokens (a claim, a release) does not seal them again.
        self._sealed: dict[Hashable, tuple[Secret | None, Secret | None, bytes | None]] = {}

    @staticmethod
    def _split(key: Hashable) -> tuple[str, str]:
        if not isinstance(key, tuple) or len(key) != 2:
            raise TypeError("a grant key is (slug, user)")
        return str(key[0]), str(key[1])

    async def load(self, key: Hashable) -> GrantState | None:
        slug, user = self._split(key)
        row = await self._store.get_oauth_grant(slug, user)
        if row is None:
            return None
        access = refresh = None
        if row.ciphertext is not None:
            try:
                plain = await self._crypto.decrypt(row.ciphertext, grant_binding(slug, user))
                tokens = json.loads(plain)
                access = Secret(tokens["a"].encode()) if tokens.get("a") else None
                refresh = Secret(tokens["r"].encode()) if tokens.get("r") else None
            except (InvalidCiphertext, ValueError, KeyError, TypeError, AttributeError):
                access = refresh = None
            else:
                self._sealed[key] = (access, refresh, row.ciphertext)
        status: GrantStatus = "authorized"
        if row.status == "refreshing":
            status = "refreshing"
        elif row.status == "reauthorization_required":
            status = "reauthorization_required"
        return GrantState(
            access_token=access,
            refresh_token=refresh,
            expires_at=_seconds(row.expires_at),
            status=status,
            version=row.version,
            lease_until=_seconds(row.lease_until),
            lifetime=row.lifetime,
        )

    async def compare_and_set(self, key: Hashable, expected_version: int, new: GrantState) -> bool:
        slug, user = self._split(key)
        ciphertext = await self._seal(key, slug, user, new)
        grant = OAuthGrant(
            slug=slug,
            user=user,
            ciphertext=ciphertext,
            expires_at=_time(new.expires_at),
            lifetime=new.lifetime,
            status=new.status,
            lease_until=_time(new.lease_until),
            version=expected_version + 1,
            updated_at=self._clock(),
        )
        return await self._store.put_oauth_grant(grant, expected_version=expected_version)

    async def _seal(self, key: Hashable, slug: str, user: str, new: GrantState) -> bytes | None:
        if new.access_token is None and new.refresh_token is None:
            return None
        known = self._sealed.get(key)
        if known is not None and known[0] is new.access_token and known[1] is new.refresh_token:
            return known[2]
        tokens = {
            "a": new.access_token.reveal().decode() if new.access_token else "",
            "r": new.refresh_token.reveal().decode() if new.refresh_token else None,
        }
        ciphertext = await self._crypto.encrypt(
            json.dumps(tokens).encode(), grant_binding(slug, user)
        )
        self._sealed[key] = (new.access_token, new.refresh_token, ciphertext)
        return ciphertext
