"""``MemoryStore``: the whole ``Store`` protocol on plain dicts.

For users' own tests (``store="memory://"``) and as the simplest model of
the contract. Nothing survives ``close()``... or the process. Timestamps are
kept at millisecond precision, as the SQLite store keeps them, so code
tested against it sees what production sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from .._audit.chain import AuditKey, ChainAnchor, ChainHead, advance_heads, chain_name
from .._errors import (
    ConfigurationError,
    Conflict,
    NotFound,
    SlugTaken,
    VersionConflict,
)
from .._paging import check_limit, decode_seq_cursor, decode_slug_cursor, encode_cursor
from ..models import ApiKey, AuditEvent, Connection, OAuthGrant, Page
from ..storage import (
    AuditQuery,
    Capabilities,
    Change,
    ChangeListener,
    notify_listeners,
    page_by_id,
    seal_event,
)

__all__ = ["MemoryStore"]


_CONN_CURSOR = b"mc1:"
_AUDIT_CURSOR = b"ma1:"


def _ms(value: datetime) -> datetime:
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _ms_opt(value: datetime | None) -> datetime | None:
    return None if value is None else _ms(value)


class MemoryStore:
    """A dict-backed ``Store``; ``MemoryStore.from_url("memory://")``.

    Writes complete without awaiting anything, so each method is atomic on
    the event loop: concurrent callers can never interleave inside one.
    """

    capabilities = Capabilities(shared=False, notifies_remote=False, audit=True)

    def __init__(self) -> None:
        self._connections: dict[str, Connection] = {}
        self._keys: dict[str, ApiKey] = {}
        self._by_hash: dict[bytes, str] = {}
        self._events: dict[str | None, list[AuditEvent]] = {}
        self._event_ids: set[str] = set()
        self._heads: dict[str | None, ChainHead] = {}
        self._anchor: ChainAnchor | None = None
        self._audit_key: AuditKey | None = None
        self._listeners: list[ChangeListener] = []
        self._grants: dict[tuple[str, str], OAuthGrant] = {}

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://`` (anything after the scheme is ignored).

        Raises:
            ConfigurationError: the scheme is not ``memory``.
        """
        if not isinstance(url, str) or not url.lower().startswith("memory:"):
            raise ConfigurationError("a MemoryStore URL looks like memory://")
        return cls()

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._connections)} connections)"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _notify(self, change: Change) -> None:
        notify_listeners(self._listeners, change)

    # -- connections -----------------------------------------------------
    @staticmethod
    def _normal(connection: Connection, *, version: int, created_at: datetime) -> Connection:
        return attrs.evolve(
            connection,
            version=version,
            created_at=_ms(created_at),
            updated_at=_ms(connection.updated_at),
            rotated_at=_ms_opt(connection.rotated_at),
        )

    async def create_connection(
        self, connection: Connection, *, audit_events: Sequence[AuditEvent] = ()
    ) -> Connection:
        if connection.slug in self._connections:
            raise SlugTaken(f"the slug {connection.slug!r} is taken")
        self._append_now(audit_events)
        stored = self._normal(connection, version=1, created_at=connection.created_at)
        self._connections[stored.slug] = stored
        self._notify(Change("connection", stored.slug))
        return stored

    async def get_connection(self, slug: str) -> Connection:
        try:
            return self._connections[slug]
        except KeyError:
            raise NotFound(f"no connection {slug!r}") from None

    async def list_connections(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Connection]:
        check_limit(limit)
        after = "" if cursor is None else decode_slug_cursor(_CONN_CURSOR, cursor)
        slugs = sorted(s for s in self._connections if s > after)
        items = [self._connections[s] for s in slugs[:limit]]
        more = len(slugs) > limit
        return Page(items, encode_cursor(_CONN_CURSOR, items[-1].slug) if more else None)

    async def update_connection(
        self,
        connection: Connection,
        *,
        expected_version: int,
        audit_events: Sequence[AuditEvent] = (),
    ) -> Connection:
        old = await self.get_connection(connection.slug)
        if old.version != expected_version:
            raise VersionConflict(
                f"connection {connection.slug!r} changed meanwhile "
                f"(version {old.version}, expected {expected_version})"
            )
        self._append_now(audit_events)
        stored = self._normal(connection, version=old.version + 1, created_at=old.created_at)
        self._connections[stored.slug] = stored
        self._notify(Change("connection", stored.slug))
        return stored

    async def delete_connection(
        self, slug: str, *, audit_events: Sequence[AuditEvent] = ()
    ) -> None:
        if slug not in self._connections:
            raise NotFound(f"no connection {slug!r}")
        self._append_now(audit_events)
        del self._connections[slug]
        await self.delete_oauth_grants(slug)
        self._notify(Change("connection", slug))

    # -- OAuth grants ----------------------------------------------------
    async def get_oauth_grant(self, slug: str, user: str = "") -> OAuthGrant | None:
        return self._grants.get((slug, user))

    async def list_oauth_grants(self, slug: str) -> list[OAuthGrant]:
        return [self._grants[k] for k in sorted(k for k in self._grants if k[0] == slug)]

    async def put_oauth_grant(self, grant: OAuthGrant, *, expected_version: int) -> bool:
        key = (grant.slug, grant.user)
        current = self._grants.get(key)
        if (current.version if current is not None else 0) != expected_version:
            return False
        self._grants[key] = attrs.evolve(
            grant,
            version=expected_version + 1,
            expires_at=_ms_opt(grant.expires_at),
            lease_until=_ms_opt(grant.lease_until),
            updated_at=_ms(grant.updated_at),
        )
        return True

    async def delete_oauth_grants(self, slug: str, user: str | None = None) -> None:
        for key in [k for k in self._grants if k[0] == slug and (user is None or k[1] == user)]:
            del self._grants[key]

    # -- gateway API keys ------------------------------------------------
    async def create_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        if key.id in self._keys or key.key_hash in self._by_hash:
            raise Conflict("an API key with this id or hash exists")
        self._append_now(audit_events)
        stored = attrs.evolve(
            key,
            created_at=_ms(key.created_at),
            expires_at=_ms_opt(key.expires_at),
            revoked_at=_ms_opt(key.revoked_at),
        )
        self._keys[stored.id] = stored
        self._by_hash[stored.key_hash] = stored.id
        self._notify(Change("api_key", stored.id))
        return stored

    async def get_api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        key_id = self._by_hash.get(key_hash)
        return None if key_id is None else self._keys[key_id]

    async def list_api_keys(self) -> list[ApiKey]:
        # dicts keep insertion order, so a stable sort breaks created_at ties by insertion.
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    async def update_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        old = self._keys.get(key.id)
        if old is None:
            raise NotFound(f"no API key {key.id!r}")
        self._append_now(audit_events)
        stored = attrs.evolve(
            old,
            name=key.name,
            connections=key.connections,
            expires_at=_ms_opt(key.expires_at),
            rate_limit=key.rate_limit,
            tools=key.tools,
            max_concurrent=key.max_concurrent,
        )
        self._keys[key.id] = stored
        self._notify(Change("api_key", key.id))
        return stored

    async def revoke_api_key(
        self, key_id: str, *, at: datetime, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        old = self._keys.get(key_id)
        if old is None:
            raise NotFound(f"no API key {key_id!r}")
        self._append_now(audit_events)
        stored = old if old.revoked_at is not None else attrs.evolve(old, revoked_at=_ms(at))
        self._keys[key_id] = stored
        self._notify(Change("api_key", key_id))
        return stored

    # -- audit -----------------------------------------------------------
    async def use_audit_key(self, key: AuditKey | None) -> None:
        self._audit_key = key

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        self._append_now(events)

    def _append_now(self, events: Sequence[AuditEvent]) -> None:
        """Append without awaiting: atomic on the loop, and with the write it goes with."""
        sealed: dict[str | None, list[AuditEvent]] = {}
        ids: set[str] = set()
        for event in events:
            if event.id in self._event_ids or event.id in ids:
                continue
            chain = sealed.setdefault(event.connection, [])
            stored = self._events.get(event.connection, [])
            previous = chain[-1] if chain else (stored[-1] if stored else None)
            event = attrs.evolve(event, timestamp=_ms(event.timestamp))
            chain.append(seal_event(event, previous, self._audit_key))
            ids.add(event.id)
        if not sealed:
            return
        tails = {slug: chain[-1] for slug, chain in sealed.items()}
        heads, anchor = advance_heads(
            tails, {c: self._heads.get(c) for c in tails}, self._anchor, self._audit_key
        )
        # Commit only once the whole batch is sealed: all or nothing.
        for slug, chain in sealed.items():
            self._events.setdefault(slug, []).extend(chain)
        self._event_ids |= ids
        self._heads.update((h.chain, h) for h in heads)
        self._anchor = anchor

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        return dict(self._heads), self._anchor

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        found = (e for chain in self._events.values() for e in chain if query.matches(e))
        return page_by_id(found, b"mall1:", limit=limit, cursor=cursor)

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        check_limit(limit)
        before: int | None = None
        if cursor is not None:
            before = decode_seq_cursor(_AUDIT_CURSOR, cursor, connection=chain_name(connection))
        chosen = [
            e
            for e in reversed(self._events.get(connection, []))
            if (before is None or e.seq < before) and (since is None or e.timestamp >= since)
        ]
        items = chosen[:limit]
        more = len(chosen) > limit
        return Page(
            items,
            encode_cursor(_AUDIT_CURSOR, f"{items[-1].seq}:{chain_name(connection)}")
            if more
            else None,
        )

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        return [e for e in self._events.get(connection, []) if e.seq > after_seq][:limit]

    async def audit_connections(self) -> list[str]:
        return sorted(slug for slug, events in self._events.items() if events and slug is not None)
