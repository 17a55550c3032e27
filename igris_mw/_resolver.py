"""Key and connection resolution for the gateway path, with its caches and their invalidation.

``Resolver`` turns a raw ``ig_`` token into a usable ``ApiKey`` and a slug
into a ``_Resolved`` connection (the record plus a ready ``Target`` with the
decrypted credential headers), from two ``RefreshingCache`` maps kept fresh
by the store's ``Change`` notifications (see ``_cache`` for the freshness
rules). Once warm, neither reads the store nor unwraps a key. It needs no
ASGI: tests drive it directly.

A credential the configured crypto cannot open (sealed under a master key
that is not configured, or a damaged envelope) is resolved, not raised: the
entry holds no target and names the fault, the gateway answers 503
``crypto_unavailable`` without contacting the upstream, and the operator is
told once per cache fill which key id is missing (an id, never key material).

It also keeps the open-work registry (``_openwork``): when a change notice
names a key or a connection with requests open under it, ``recheck`` reads
the record again and ends the open work it no longer allows (disabled,
deleted, revoked, expired, or no longer granted); a rotation or any other
change leaves it running. Changes by processes that send no notices (a CLI
on a shared SQLite file) are found by a sweep every ``ttl`` seconds while
work is open. Entries are served past a failed refresh for at most
``max_stale`` seconds (see ``_cache``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any, Final

import attrs

from . import _auth
from ._cache import RefreshingCache
from ._errors import (
    CryptoUnavailable,
    InvalidCiphertext,
    NotFound,
    Unauthorized,
    UnknownKeyId,
    ValidationError,
)
from ._oauth.gateway import OAuthConnection
from ._openwork import OpenWork
from ._proxy import Target
from ._proxy.tls import ContextCache, TlsMaterial
from ._service import Service
from ._user_credentials import UserCredentials
from .models import ApiKey, AuthType, Connection, utcnow
from .storage import Change, Store

__all__ = ["MISSING", "Resolver", "_Missing", "_Resolved"]

log = logging.getLogger("igris_mw.gateway")

# A crypto fault will not heal by itself (the keys are read at start): ask
# clients to come back in a while, not to hammer.
CRYPTO_RETRY_AFTER: Final = 30


@attrs.frozen
class _Missing:
    """A cached "no such connection / key"."""


MISSING: Final = _Missing()


@attrs.frozen
class _Resolved:
    """A connection as the hot path needs it: the record and a ready Target.

    ``target`` is ``None`` when the credential cannot be opened with the
    configured crypto; ``fault`` then says why, for the operator's log.
    """

    connection: Connection
    target: Target | None = attrs.field(repr=False)
    fault: str | None = None
    #: For OAuth auth types (holds the client secret); ``target`` then injects
    #: nothing and the gateway adds the access token per request.
    oauth: OAuthConnection | None = attrs.field(default=None, repr=False)

    def unusable(self) -> CryptoUnavailable:
        """The client-facing error for a connection whose credential cannot be opened."""
        return CryptoUnavailable(
            "the gateway cannot decrypt this connection's credential; "
            "the operator must configure the master key it was sealed with",
            retry_after=CRYPTO_RETRY_AFTER,
        )


_MAX_USER_TARGETS = 100_000

# OAuth connections inject the access token obtained with the credential, not
# the credential (the client secret) itself.
_NO_STATIC_HEADER = frozenset({AuthType.NONE, AuthType.OAUTH2_CLIENT_CREDENTIALS, AuthType.OAUTH2})


def inject_headers(conn: Connection, credential: bytes | None) -> tuple[tuple[str, str], ...]:
    """The headers that carry ``credential`` to the upstream, per the connection's auth type."""
    if conn.auth_type in _NO_STATIC_HEADER or credential is None:
        return ()
    text = credential.decode("utf-8")
    if conn.auth_type is AuthType.BEARER:
        return (("Authorization", f"Bearer {text}"),)
    if conn.auth_type is AuthType.BASIC:
        return (("Authorization", "Basic " + base64.b64encode(credential).decode("ascii")),)
    assert conn.header_name is not None
    return ((conn.header_name, text),)


class Resolver:
    """Cached resolution of gateway keys and connections for one store.

    Args:
        store: where keys and connections live; its ``Change`` notices
            invalidate the caches (``attach`` registers the listener).
        service: opens credentials (decrypts them under the binding).
        ttl: the backstop bound on how long an unnotified change can go unseen.
        max_stale: how long an entry is served after its last successful
            check while the store cannot be reached (then 503).
        tls: the SSL contexts of connections with their own TLS material,
            built here (cold path) once per connection version.
    """

    def __init__(
        self,
        store: Store,
        service: Service,
        *,
        ttl: float,
        max_stale: float = 60.0,
        tls: ContextCache | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("cache_ttl must be positive")
        if max_stale <= 0:
            raise ValueError("max_stale must be positive")
        self.store = store
        self.service = service
        self.ttl = ttl
        self.keys: RefreshingCache[bytes, ApiKey | _Missing] = RefreshingCache(
            self._load_key, ttl=ttl, max_stale=max_stale, negative=_is_missing
        )
        self.connections: RefreshingCache[str, _Resolved | _Missing] = RefreshingCache(
            self._load_connection,
            ttl=ttl,
            revalidate=self._revalidate_connection,
            max_stale=max_stale,
            negative=_is_missing,
        )
        # id -> hash of every key loaded; a key's hash never changes.
        self._key_hash_by_id: dict[str, bytes] = {}
        self.open_work = OpenWork()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.tls = tls if tls is not None else ContextCache()
        self._ttl = ttl
        self._users = UserCredentials(service)
        # Per-user static credentials of per_user connections, keyed by (slug,
        # user) and valid for one connection version (every per-user change
        # bumps it) and at most ``ttl`` seconds: (version, loaded at, target).
        self._user_targets: dict[tuple[str, str], tuple[int, float, Target | None]] = {}

    def attach(self) -> None:
        """Start following the store's changes (call once the store is open)."""
        self.store.add_listener(self.on_change)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def aclose(self) -> None:
        """Stop the background refreshes, rechecks and the sweep."""
        tasks = list(self._tasks)
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.keys.aclose()
        await self.connections.aclose()

    # -- the two lookups ----------------------------------------------------
    async def authenticate(self, token: str) -> ApiKey:
        """The usable key record for a raw bearer token, from the cache.

        Raises:
            Unauthorized: malformed (refused without a store read), unknown,
                revoked or expired.
        """
        if not _auth.is_well_formed(token):
            raise Unauthorized("the gateway key is missing or malformed")
        record = await self.keys.get(_auth.hash_key(token))
        if isinstance(record, _Missing) or not record.is_usable(utcnow()):
            raise Unauthorized("the gateway key is unknown, revoked or expired")
        return record

    async def connection(self, slug: str) -> _Resolved | _Missing:
        """The connection for ``slug`` (``MISSING`` if there is none), from the cache."""
        return await self.connections.get(slug)

    async def user_target(self, found: _Resolved, base: Target, user: str) -> Target | None:
        """``user``'s Target on a per_user connection (None: no credential), cached.

        Raises:
            CryptoUnavailable: the user's credential does not open.
        """
        conn = found.connection
        key = (conn.slug, user)
        now = time.monotonic()
        hit = self._user_targets.get(key)
        if hit is not None and hit[0] == conn.version and now - hit[1] < self._ttl:
            return hit[2]
        try:
            secret = await self._users.open(conn, user)
        except InvalidCiphertext as exc:
            _crypto_fault(conn, exc)
            raise found.unusable() from None
        target = None
        if secret is not None:
            # evolve keeps the connection's URL and TLS context.
            target = attrs.evolve(base, inject=inject_headers(conn, secret.reveal()))
        if len(self._user_targets) > _MAX_USER_TARGETS:
            self._user_targets.clear()
        self._user_targets[key] = (conn.version, now, target)
        return target

    # -- invalidation -------------------------------------------------------
    def on_change(self, change: Change) -> None:
        """Forget what ``change`` made stale (a store listener); recheck the
        open work it may revoke."""
        work = self.open_work
        if change.kind == "all":
            self.connections.clear()
            self.tls.clear()
            self.keys.clear()
            if work:
                self._spawn(self.recheck_all())
        elif change.kind == "connection" and change.key is not None:
            self.connections.invalidate(change.key)
            # Old contexts hold the old client key in OpenSSL's memory: drop them now.
            self.tls.discard(change.key)
            if work and work.has_slug(change.key):
                self._spawn(self.recheck_connection(change.key))
        elif change.kind == "api_key":
            key_hash = self._key_hash_by_id.get(change.key) if change.key else None
            if key_hash is not None:
                self.keys.invalidate(key_hash)
            else:
                # A new key may replace a cached "unknown": forget every negative entry.
                self.keys.clear()
            if change.key is None:
                if work:
                    self._spawn(self.recheck_all())
            elif work.has_key(change.key):
                self._spawn(self.recheck_key(change.key))
        else:
            self.connections.clear()
            if work:
                self._spawn(self.recheck_all())

    # -- revocation of open work ------------------------------------------
    def _spawn(self, job: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(job)
        except RuntimeError:  # no loop: nothing can be open in this thread
            job.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recheck_connection(self, slug: str) -> None:
        """End the open work on ``slug`` unless it still exists, enabled, as the
        same connection."""
        try:
            conn = await self.store.get_connection(slug)
        except NotFound:
            ended = self.open_work.end_connection(slug)
        except Exception as exc:
            log.warning("cannot recheck connection %r: %s", slug, type(exc).__name__)
            return
        else:
            if conn.enabled:
                ended = self.open_work.end_connection(slug, keep_created=conn.created_at)
            else:
                ended = self.open_work.end_connection(slug)
        if ended:
            log.info("connection %r: ended %d open request(s)", slug, ended)

    async def recheck_key(self, key_id: str) -> None:
        """End the key's open work unless it is still usable and still grants
        each connection."""
        key_hash = self._key_hash_by_id.get(key_id)
        if key_hash is None:
            return
        try:
            record = await self.store.get_api_key_by_hash(key_hash)
        except Exception as exc:
            log.warning("cannot recheck API key %s: %s", key_id, type(exc).__name__)
            return
        work = self.open_work
        if record is None or not record.is_usable(utcnow()):
            ended = work.end_key(key_id)
        else:
            slugs = work.slugs(key_id)
            ended = work.end_key(key_id, [s for s in slugs if not record.allows(s)])
            work.set_expiry(key_id, record.expires_at)
        if ended:
            log.info("API key %s: ended %d open request(s)", key_id, ended)

    async def recheck_all(self) -> None:
        """Recheck every key and connection with open work."""
        work = self.open_work
        for slug in work.slugs():
            await self.recheck_connection(slug)
        for key_id in work.key_ids():
            await self.recheck_key(key_id)

    async def _sweep(self) -> None:
        # The bound for changes that come with no notice (another process on
        # a shared SQLite file): open work is rechecked every ttl.
        while True:
            await asyncio.sleep(self.ttl)
            if self.open_work:
                try:
                    await self.recheck_all()
                except Exception:  # never let the sweep die
                    log.exception("open-work sweep failed")

    # -- loading ------------------------------------------------------------
    async def _load_key(self, key_hash: bytes) -> ApiKey | _Missing:
        record = await self.store.get_api_key_by_hash(key_hash)
        if record is None:
            return MISSING
        self._key_hash_by_id[record.id] = key_hash
        return record

    async def _load_connection(self, slug: str) -> _Resolved | _Missing:
        try:
            conn = await self.store.get_connection(slug)
        except NotFound:
            return MISSING
        return await self._resolve(conn)

    async def _revalidate_connection(
        self, slug: str, old: _Resolved | _Missing
    ) -> _Resolved | _Missing:
        try:
            conn = await self.store.get_connection(slug)
        except NotFound:
            return MISSING
        if isinstance(old, _Resolved) and old.connection.version == conn.version:
            return old  # unchanged: no second unwrap
        return await self._resolve(conn)

    async def _resolve(self, conn: Connection) -> _Resolved:
        try:
            secret = await self.service.open_credential(conn)
        except InvalidCiphertext as exc:
            return _Resolved(conn, None, _crypto_fault(conn, exc))
        inject = inject_headers(conn, secret.reveal() if secret is not None else None)
        try:
            context = await self._ssl_context(conn)
        except InvalidCiphertext as exc:
            return _Resolved(conn, None, _crypto_fault(conn, exc))
        except ValidationError as exc:
            log.error("connection %r: its TLS settings cannot be used: %s", conn.slug, exc.message)
            return _Resolved(conn, None, f"its TLS settings cannot be used: {exc.message}")
        target = Target(base_url=conn.upstream_url, inject=inject, ssl=context)
        return _Resolved(conn, target, oauth=OAuthConnection.of(conn, secret))

    async def _ssl_context(self, conn: Connection) -> ssl.SSLContext | None:
        """The connection's own context, or ``None`` for the forwarder's default."""
        tls = conn.tls
        if tls is None or not conn.upstream_url.lower().startswith("https:"):
            return None
        key = await self.service.open_client_key(conn)
        material = TlsMaterial(
            ca_pem=tls.ca_certificate,
            client_cert_pem=tls.client_certificate,
            client_key=key,
        )
        # The stored text changes with every seal (fresh data key): a connection
        # deleted and created again under the same slug and version is told apart.
        stamp = hashlib.sha256(tls.to_text().encode()).digest()
        return self.tls.get(conn.slug, conn.version, material, stamp)


def _is_missing(value: object) -> bool:
    return isinstance(value, _Missing)


def _crypto_fault(conn: Connection, exc: InvalidCiphertext) -> str:
    """Log, for the operator, why ``conn``'s credential does not open; return the reason."""
    if isinstance(exc, UnknownKeyId):
        # The key id is a one-way fingerprint (HMAC of the key), safe to log.
        why = f"it was sealed with master key id {exc.key_id}, which is not configured"
        log.error(
            "connection %r: cannot decrypt its credential: %s; add that master key "
            "(after the primary) to IGRIS_MASTER_KEY or IGRIS_MASTER_KEY_FILE",
            conn.slug,
            why,
        )
    else:
        why = "its envelope does not open under the configured master keys (damaged or moved)"
        log.error("connection %r: cannot decrypt its credential: %s", conn.slug, why)
    return why
