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

import attrs

from igris_mw._errors import InvalidCiphertext
from igris_mw._oauth.authorization_code import (
    AuthorizationRequest,
    PendingAuthorization,
    slug_of_state,
)
from igris_mw._oauth.errors import OAuthError
from igris_mw._oauth.grants import GrantState, GrantStatus
from igris_mw._oauth.tokens import ClientAuth
from igris_mw.crypto import CryptoProvider, binding
from igris_mw.models import OAuthGrant, Secret, utcnow
from igris_mw.storage import Store

__all__ = ["FLOW_PREFIX", "SealedFlowStore", "SealedGrantStore", "grant_binding", "is_flow_row"]


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


#: Grant rows of pending consent flows use this user prefix: not printable, so
#: no end user's id (1-256 printable characters) can ever collide with it.
FLOW_PREFIX = "\x1fflow:"


def is_flow_row(user: str) -> bool:
    """Whether a grant row's user names a pending flow rather than an end user."""
    return user.startswith(FLOW_PREFIX)


class SealedFlowStore:
    """A ``FlowStore`` in the igris-mw store: any process may begin or complete a flow.

    A flow is a grant row ``(slug, FLOW_PREFIX + nonce)`` with status ``flow``,
    its details (the PKCE verifier among them) sealed and bound to that key.
    ``take`` claims it by compare-and-set (status ``used``), so exactly one
    caller gets it, then deletes it. The client secret is not stored: whoever
    completes the flow reads it from the connection.
    """

    def __init__(
        self, store: Store, crypto: CryptoProvider, *, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock

    @staticmethod
    def _key(state: str) -> tuple[str, str] | None:
        found = slug_of_state(state)
        if found is None:
            return None
        return found[0], FLOW_PREFIX + found[1]

    async def save(self, state: str, pending: PendingAuthorization) -> None:
        key = self._key(state)
        if key is None:
            raise ValueError("not a state of this module")
        slug, user = key
        await self._sweep(slug)
        r = pending.request
        details = {
            "c": pending.connection, "u": pending.user, "ae": r.authorization_endpoint,
            "te": r.token_endpoint, "cid": r.client.client_id, "m": r.client.method,
            "r": r.redirect_uri, "s": list(r.scopes), "res": r.resource, "iss": r.issuer,
            "ir": r.iss_required, "v": pending.code_verifier.reveal().decode(),
            "x": pending.expires_at,
        }  # fmt: skip
        sealed = await self._crypto.encrypt(
            json.dumps(details).encode(), binding(slug, 0, user, "oauth_flow")
        )
        row = OAuthGrant(
            slug=slug, user=user, ciphertext=sealed, status="flow",
            expires_at=_time(pending.expires_at), updated_at=self._clock(),
        )  # fmt: skip
        if not await self._store.put_oauth_grant(row, expected_version=0):
            raise OAuthError("a consent flow could not be stored (state collision)")

    async def take(self, state: str) -> PendingAuthorization | None:
        key = self._key(state)
        if key is None:
            return None
        slug, user = key
        row = await self._store.get_oauth_grant(slug, user)
        if row is None or row.status != "flow" or row.ciphertext is None:
            return None
        used = attrs.evolve(row, status="used", version=row.version + 1)
        if not await self._store.put_oauth_grant(used, expected_version=row.version):
            return None  # another callback took it first
        await self._store.delete_oauth_grants(slug, user)
        try:
            plain = await self._crypto.decrypt(row.ciphertext, binding(slug, 0, user, "oauth_flow"))
            d = json.loads(plain)
            method = d["m"]
            # The secret is a placeholder: the completer supplies the real client.
            client = (
                ClientAuth(d["cid"], None, "none")
                if method == "none"
                else ClientAuth(d["cid"], Secret(b"\x00"), method)
            )
            request = AuthorizationRequest(
                authorization_endpoint=d["ae"], token_endpoint=d["te"], client=client,
                redirect_uri=d["r"], scopes=tuple(d["s"]), resource=d["res"],
                issuer=d["iss"], iss_required=bool(d["ir"]),
            )  # fmt: skip
            return PendingAuthorization(
                connection=d["c"], user=d["u"], request=request,
                code_verifier=Secret(d["v"].encode()), expires_at=float(d["x"]),
            )  # fmt: skip
        except (InvalidCiphertext, ValueError, KeyError, TypeError):
            return None

    async def _sweep(self, slug: str) -> None:
        """Delete this connection's flows that expired unused (consents abandoned)."""
        now = self._clock()
        for row in await self._store.list_oauth_grants(slug):
            if is_flow_row(row.user) and (row.expires_at is None or row.expires_at <= now):
                await self._store.delete_oauth_grants(slug, row.user)
