"""``PostgresStore``: the ``Store`` protocol on PostgreSQL (psycopg 3, async pool).

Several gateway processes share one database: writes notify every process
over LISTEN/NOTIFY (``_notify``), and the audit chains stay linear with any
number of writers (see ``append_audit_events``).

Faults: every psycopg error is translated in one place, ``_connection``;
an outage gives ``StoreUnavailable`` within ``timeout`` seconds (the pool
wait), never a hang, and the pool checks each connection before lending it,
so a restarted server is used again without reopening the store.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, LiteralString
from urllib.parse import urlsplit

import attrs
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from igris_mw.errors import (
    AuditRejected,
    ConfigurationError,
    Conflict,
    IgrisError,
    NotFound,
    SlugTaken,
    StoreUnavailable,
    VersionConflict,
)
from igris_mw.models import (
    ApiKey,
    AuditEvent,
    AuthType,
    Connection,
    OAuthGrant,
    Page,
    Scope,
    TlsConfig,
    policy_from_json,
    policy_to_json,
    tls_text,
)
from igris_mw.paging import (
    check_limit,
    decode_cursor,
    decode_seq_cursor,
    decode_slug_cursor,
    encode_cursor,
)
from igris_mw.plugins import redact_url
from igris_mw.storage import (
    ANCHOR,
    AuditKey,
    AuditQuery,
    Capabilities,
    ChainAnchor,
    ChainHead,
    Change,
    ChangeListener,
    advance_heads,
    chain_name,
    notify_listeners,
    reseal_chain,
    seal_event,
    verify_chain,
)

from ._notify import CHANNEL, Listener, payload
from ._schema import SCHEMA_VERSION, migrate

__all__ = ["LISTENER_NAME", "SCHEMA_VERSION", "PostgresStore"]

#: ``application_name`` of the listening connection, to find it in ``pg_stat_activity``
LISTENER_NAME = "igris-mw-listener"


# Cursor prefixes: the text "c:<slug>" / "a:<seq>", as before the helpers were shared.
_CONN_CURSOR = b"c:"
_AUDIT_CURSOR = b"a:"
_ALL_CURSOR = b"all:"

Row = dict[str, Any]

_CONNECTION_COLS = (
    "slug, name, upstream_url, auth_type, header_name, enabled, credential_version, "
    "ciphertext, created_at, updated_at, rotated_at, version, tls, policy, oauth, "
    "credential_scope"
)
_GRANT_COLS = (
    'slug, "user", ciphertext, expires_at, lifetime, status, lease_until, version, updated_at'
)
_API_KEY_COLS = (
    'id, name, key_hash, scopes, connections, created_at, expires_at, revoked_at, policy, "user"'
)
_AUDIT_COLS = (
    'id, connection, seq, ts, kind, action, api_key_id, "user", metadata, method, path, '
    "rpc_method, tool, status, outcome, latency_ms, bytes_in, bytes_out, credential_version, "
    "prev_hash, hash, count, key_id, changes"
)
_INSERT_EVENT = f"INSERT INTO igris_audit_events ({_AUDIT_COLS}) VALUES ({', '.join(['%s'] * 24)})"  # noqa: S608


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*):[^@\s]*@")
_KEYWORD_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _metadata_text(metadata: Any) -> str | None:
    # Kept as the exact JSON text, not jsonb: jsonb rewrites numbers (1e100
    # comes back as an int, -0.0 as 0) and refuses "\u0000", any of which
    # would change the canonical JSON the audit hash is computed over.
    if metadata is None:
        return None
    # key order kept too, so the record reads back exactly as written
    return json.dumps(dict(metadata), separators=(",", ":"), ensure_ascii=True)


def _grant_from_row(row: Row) -> OAuthGrant:
    return OAuthGrant(
        slug=row["slug"],
        user=row["user"],
        ciphertext=bytes(row["ciphertext"]) if row["ciphertext"] is not None else None,
        expires_at=_utc(row["expires_at"]),
        lifetime=row["lifetime"],
        status=row["status"],
        lease_until=_utc(row["lease_until"]),
        version=row["version"],
        updated_at=row["updated_at"].astimezone(UTC),
    )


def _oauth_text(c: Connection) -> str | None:
    return None if c.oauth is None else json.dumps(dict(c.oauth))


def _connection_from_row(row: Row) -> Connection:
    return Connection(
        slug=row["slug"],
        name=row["name"],
        upstream_url=row["upstream_url"],
        auth_type=AuthType(row["auth_type"]),
        header_name=row["header_name"],
        enabled=row["enabled"],
        credential_version=row["credential_version"],
        ciphertext=bytes(row["ciphertext"]) if row["ciphertext"] is not None else None,
        created_at=row["created_at"].astimezone(UTC),
        updated_at=row["updated_at"].astimezone(UTC),
        rotated_at=_utc(row["rotated_at"]),
        version=row["version"],
        tls=TlsConfig.from_text(row["tls"]),
        **policy_from_json(row["policy"]),
        oauth=None if row["oauth"] is None else json.loads(row["oauth"]),
        credential_scope=row["credential_scope"],
    )


def _api_key_from_row(row: Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        key_hash=bytes(row["key_hash"]),
        scopes=frozenset(Scope(s) for s in row["scopes"]),
        connections=frozenset(row["connections"]) if row["connections"] is not None else None,
        created_at=row["created_at"].astimezone(UTC),
        expires_at=_utc(row["expires_at"]),
        revoked_at=_utc(row["revoked_at"]),
        **policy_from_json(row["policy"]),
        user=row["user"],
    )


def _event_from_row(row: Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        timestamp=row["ts"].astimezone(UTC),
        connection=row["connection"] or None,
        kind=row["kind"],
        action=row["action"],
        api_key_id=row["api_key_id"],
        user=row["user"],
        metadata=json.loads(row["metadata"]) if row["metadata"] is not None else None,
        method=row["method"],
        path=row["path"],
        rpc_method=row["rpc_method"],
        tool=row["tool"],
        status=row["status"],
        outcome=row["outcome"],
        latency_ms=row["latency_ms"],
        bytes_in=row["bytes_in"],
        bytes_out=row["bytes_out"],
        credential_version=row["credential_version"],
        seq=row["seq"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
        count=row["count"],
        key_id=row["key_id"],
        changes=json.loads(row["changes"]) if row["changes"] is not None else None,
    )


def _event_params(e: AuditEvent) -> tuple[Any, ...]:
    return (
        e.id, chain_name(e.connection), e.seq, e.timestamp, e.kind, e.action, e.api_key_id,
        e.user, _metadata_text(e.metadata), e.method, e.path, e.rpc_method, e.tool, e.status,
        e.outcome, e.latency_ms, e.bytes_in, e.bytes_out, e.credential_version,
        e.prev_hash, e.hash, e.count, e.key_id, _metadata_text(e.changes),
    )  # fmt: skip


class PostgresStore:
    """The igris-mw store on PostgreSQL.

    Args:
        dsn: a ``postgresql://`` or ``postgres://`` URL (libpq syntax; query
            parameters such as ``sslmode`` pass through to libpq).
        timeout: seconds a call waits for a pooled connection before it
            raises ``StoreUnavailable``; bounds every call during an outage.
        connect_timeout: libpq's connect timeout in seconds (at least 2).
        min_size, max_size: the pool's size.

    Raises:
        ConfigurationError: the DSN cannot be parsed.
    """

    capabilities = Capabilities(shared=True, notifies_remote=True, audit=True)

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = 2.0,
        connect_timeout: int = 2,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        self._safe_url = self._scrub(redact_url(dsn), dsn)
        try:
            conninfo_to_dict(dsn)
            if "://" in dsn:
                _ = urlsplit(dsn).port
        except (psycopg.Error, ValueError) as exc:
            raise ConfigurationError(
                f"malformed postgres store URL {self._safe_url!r}: "
                f"{self._scrub(_one_line(str(exc)), dsn)}"
            ) from None
        self._dsn = dsn
        self._timeout = timeout
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(2, int(connect_timeout)),
            "application_name": "igris-mw",
        }
        self._min_size = min_size
        self._max_size = max_size
        self._pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._listener: Listener | None = None
        self._listeners: list[ChangeListener] = []
        self._audit_key: AuditKey | None = None
        self._origin = uuid.uuid4().hex[:16]

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Build (not open) a store for ``url``.

        Raises:
            ConfigurationError: the URL cannot be parsed.
        """
        return cls(url)

    def __repr__(self) -> str:
        return f"PostgresStore({self._safe_url!r})"

    # -- errors: the one boundary ----------------------------------------
    @staticmethod
    def _scrub(text: str, dsn: str) -> str:
        """``text`` with any password from ``dsn`` (or any URL or keyword form) masked."""
        password = ""
        with contextlib.suppress(psycopg.Error, ValueError):
            password = str(conninfo_to_dict(dsn).get("password") or "")
        if not password:
            with contextlib.suppress(ValueError):
                password = urlsplit(dsn).password or ""
        if password:
            text = text.replace(password, "***")
        text = _URL_PASSWORD.sub(r"\1:***@", text)
        return _KEYWORD_PASSWORD.sub("password=***", text)

    def _translate(self, exc: psycopg.Error) -> StoreUnavailable:
        reason = self._scrub(_one_line(str(exc)) or type(exc).__name__, self._dsn)
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StoreUnavailable(f"postgres unreachable at {self._safe_url}: {reason}")
        return StoreUnavailable(f"postgres error at {self._safe_url}: {reason}")

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        if self._pool is None:
            raise StoreUnavailable(f"the postgres store {self._safe_url} is not open")
        timeout = self._timeout
        if self._listener is not None and not self._listener.connected:
            # the server is most likely down: answer 503 fast rather than
            # hold every request for the whole pool wait
            timeout = min(timeout, 0.5)
        try:
            async with self._pool.connection(timeout=timeout) as conn:
                yield conn
        except psycopg.Error as exc:  # PoolTimeout is an OperationalError
            raise self._translate(exc) from exc

    async def _direct(self, application_name: str = "igris-mw") -> AsyncConnection[Any]:
        try:
            return await AsyncConnection.connect(
                self._dsn, **(self._connect_kwargs | {"application_name": application_name})
            )
        except psycopg.Error as exc:
            raise self._translate(exc) from exc

    # -- lifecycle -------------------------------------------------------
    async def open(self) -> None:
        """Connect, migrate the schema, open the pool and start listening.

        Raises:
            StoreUnavailable: the server cannot be reached or refuses the login.
            ConfigurationError: the database is at a newer schema version.
        """
        if self._pool is not None:
            return
        # A direct first connection reports the real cause (bad password,
        # unknown host) where a pool would only time out.
        conn = await self._direct()
        try:
            await migrate(conn)
        except psycopg.Error as exc:
            raise self._translate(exc) from exc
        finally:
            await conn.close()
        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self._dsn,
            kwargs=self._connect_kwargs,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=self._timeout,
            name="igris-mw",
        )
        try:
            await pool.open(wait=True, timeout=max(self._timeout, 5.0))
            listener = Listener(
                lambda: self._direct(LISTENER_NAME), self._origin, self._notify_local
            )
            await listener.start()
        except (psycopg.Error, StoreUnavailable) as exc:
            await pool.close()
            if isinstance(exc, StoreUnavailable):
                raise
            raise self._translate(exc) from exc
        self._pool, self._listener = pool, listener

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        if listener is not None:
            await listener.close()
        if pool is not None:
            await pool.close()

    # -- change notification ---------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _notify_local(self, change: Change) -> None:
        notify_listeners(self._listeners, change)

    async def _send(self, conn: AsyncConnection[Any], kind: str, key: str) -> None:
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload(self._origin, kind, key)))

    # -- connections -----------------------------------------------------
    async def create_connection(
        self, connection: Connection, *, audit_events: Sequence[AuditEvent] = ()
    ) -> Connection:
        c = connection
        async with self._connection() as conn:
            try:
                async with conn.transaction():
                    cur = await conn.cursor(row_factory=dict_row).execute(
                        f"INSERT INTO igris_connections ({_CONNECTION_COLS}) "  # noqa: S608
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 1, %s, %s, %s, %s) "
                        f"RETURNING {_CONNECTION_COLS}",
                        (c.slug, c.name, c.upstream_url, c.auth_type.value, c.header_name,
                         c.enabled, c.credential_version, c.ciphertext, c.created_at,
                         c.updated_at, c.rotated_at, tls_text(c.tls), policy_to_json(c),
                         _oauth_text(c), c.credential_scope),
                    )  # fmt: skip
                    row = await cur.fetchone()
                    await self._append_in(conn, audit_events)
                    await self._send(conn, "connection", c.slug)
            except psycopg.errors.UniqueViolation:
                raise SlugTaken(f"the slug {c.slug!r} is taken") from None
        assert row is not None
        self._notify_local(Change("connection", c.slug))
        return _connection_from_row(row)

    async def get_connection(self, slug: str) -> Connection:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_CONNECTION_COLS} FROM igris_connections WHERE slug = %s",  # noqa: S608
                (slug,),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no connection {slug!r}")
        return _connection_from_row(row)

    async def list_connections(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Connection]:
        check_limit(limit)
        after = decode_slug_cursor(_CONN_CURSOR, cursor) if cursor is not None else None
        query: LiteralString = f"SELECT {_CONNECTION_COLS} FROM igris_connections"  # noqa: S608
        params: tuple[Any, ...] = (limit + 1,)
        if after is not None:
            query += " WHERE slug > %s"
            params = (after, limit + 1)
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query + " ORDER BY slug LIMIT %s", params
            )
            rows = await cur.fetchall()
        items = [_connection_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit and items
        return Page(items, encode_cursor(_CONN_CURSOR, items[-1].slug) if more else None)

    async def update_connection(
        self,
        connection: Connection,
        *,
        expected_version: int,
        audit_events: Sequence[AuditEvent] = (),
    ) -> Connection:
        c = connection
        async with self._connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(
                "UPDATE igris_connections SET name = %s, upstream_url = %s, auth_type = %s, "  # noqa: S608
                "header_name = %s, enabled = %s, credential_version = %s, ciphertext = %s, "
                "updated_at = %s, rotated_at = %s, tls = %s, policy = %s, oauth = %s, "
                "credential_scope = %s, version = version + 1 "
                f"WHERE slug = %s AND version = %s RETURNING {_CONNECTION_COLS}",
                (c.name, c.upstream_url, c.auth_type.value, c.header_name, c.enabled,
                 c.credential_version, c.ciphertext, c.updated_at, c.rotated_at,
                 tls_text(c.tls), policy_to_json(c), _oauth_text(c), c.credential_scope, c.slug,
                 expected_version),
            )  # fmt: skip
            row = await cur.fetchone()
            if row is None:
                found = await conn.execute(
                    "SELECT 1 FROM igris_connections WHERE slug = %s", (c.slug,)
                )
                if await found.fetchone() is None:
                    raise NotFound(f"no connection {c.slug!r}")
                raise VersionConflict(
                    f"the connection {c.slug!r} was changed by another writer; retry"
                )
            await self._append_in(conn, audit_events)
            await self._send(conn, "connection", c.slug)
        self._notify_local(Change("connection", c.slug))
        return _connection_from_row(row)

    async def delete_connection(
        self, slug: str, *, audit_events: Sequence[AuditEvent] = ()
    ) -> None:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM igris_connections WHERE slug = %s RETURNING slug", (slug,)
            )
            if await cur.fetchone() is None:
                raise NotFound(f"no connection {slug!r}")
            await conn.execute("DELETE FROM igris_oauth_grants WHERE slug = %s", (slug,))
            await self._append_in(conn, audit_events)
            await self._send(conn, "connection", slug)
        self._notify_local(Change("connection", slug))

    # -- OAuth grants ----------------------------------------------------
    async def get_oauth_grant(self, slug: str, user: str = "") -> OAuthGrant | None:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_GRANT_COLS} FROM igris_oauth_grants "  # noqa: S608
                'WHERE slug = %s AND "user" = %s',
                (slug, user),
            )
            row = await cur.fetchone()
        return None if row is None else _grant_from_row(row)

    async def list_oauth_grants(self, slug: str) -> list[OAuthGrant]:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_GRANT_COLS} FROM igris_oauth_grants "  # noqa: S608
                'WHERE slug = %s ORDER BY "user"',
                (slug,),
            )
            rows = await cur.fetchall()
        return [_grant_from_row(r) for r in rows]

    async def put_oauth_grant(self, grant: OAuthGrant, *, expected_version: int) -> bool:
        g = grant
        values = (g.ciphertext, g.expires_at, g.lifetime, g.status, g.lease_until,
                  expected_version + 1, g.updated_at)  # fmt: skip
        async with self._connection() as conn, conn.transaction():
            if expected_version == 0:
                cur = await conn.execute(
                    "INSERT INTO igris_oauth_grants (ciphertext, expires_at, lifetime, status, "
                    'lease_until, version, updated_at, slug, "user") '
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (*values, g.slug, g.user),
                )
            else:
                # A single-row UPDATE ... WHERE version = %s is atomic under
                # READ COMMITTED: a concurrent writer re-checks the condition
                # after the first commits, so exactly one of them matches.
                cur = await conn.execute(
                    "UPDATE igris_oauth_grants SET ciphertext = %s, expires_at = %s, "
                    "lifetime = %s, status = %s, lease_until = %s, version = %s, "
                    'updated_at = %s WHERE slug = %s AND "user" = %s AND version = %s',
                    (*values, g.slug, g.user, expected_version),
                )
            return cur.rowcount == 1

    async def delete_oauth_grants(self, slug: str, user: str | None = None) -> None:
        async with self._connection() as conn, conn.transaction():
            if user is None:
                await conn.execute("DELETE FROM igris_oauth_grants WHERE slug = %s", (slug,))
            else:
                await conn.execute(
                    'DELETE FROM igris_oauth_grants WHERE slug = %s AND "user" = %s',
                    (slug, user),
                )

    # -- gateway API keys ------------------------------------------------
    async def create_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        k = key
        async with self._connection() as conn:
            try:
                async with conn.transaction():
                    cur = await conn.cursor(row_factory=dict_row).execute(
                        f"INSERT INTO igris_api_keys ({_API_KEY_COLS}) "  # noqa: S608
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        f"RETURNING {_API_KEY_COLS}",
                        (k.id, k.name, k.key_hash, sorted(s.value for s in k.scopes),
                         sorted(k.connections) if k.connections is not None else None,
                         k.created_at, k.expires_at, k.revoked_at, policy_to_json(k), k.user),
                    )  # fmt: skip
                    row = await cur.fetchone()
                    await self._append_in(conn, audit_events)
                    await self._send(conn, "api_key", k.id)
            except psycopg.errors.UniqueViolation:
                raise Conflict(f"an API key with the id {k.id!r} or the same key exists") from None
        assert row is not None
        self._notify_local(Change("api_key", k.id))
        return _api_key_from_row(row)

    async def get_api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_API_KEY_COLS} FROM igris_api_keys WHERE key_hash = %s",  # noqa: S608
                (key_hash,),
            )
            row = await cur.fetchone()
        return None if row is None else _api_key_from_row(row)

    async def list_api_keys(self) -> list[ApiKey]:
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_API_KEY_COLS} FROM igris_api_keys ORDER BY created_at, ord"  # noqa: S608
            )
            rows = await cur.fetchall()
        return [_api_key_from_row(r) for r in rows]

    async def update_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        k = key
        async with self._connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(
                "UPDATE igris_api_keys SET name = %s, connections = %s, expires_at = %s, "  # noqa: S608
                f"policy = %s WHERE id = %s RETURNING {_API_KEY_COLS}",
                (k.name, sorted(k.connections) if k.connections is not None else None,
                 k.expires_at, policy_to_json(k), k.id),
            )  # fmt: skip
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no API key {k.id!r}")
            await self._append_in(conn, audit_events)
            await self._send(conn, "api_key", k.id)
        self._notify_local(Change("api_key", k.id))
        return _api_key_from_row(row)

    async def revoke_api_key(
        self, key_id: str, *, at: datetime, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.cursor(row_factory=dict_row).execute(
                "UPDATE igris_api_keys SET revoked_at = coalesce(revoked_at, %s) "  # noqa: S608
                f"WHERE id = %s RETURNING {_API_KEY_COLS}",
                (at, key_id),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no API key {key_id!r}")
            await self._append_in(conn, audit_events)
            await self._send(conn, "api_key", key_id)
        self._notify_local(Change("api_key", key_id))
        return _api_key_from_row(row)

    # -- audit -----------------------------------------------------------
    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        """``_append_audit_events``, with a refused value told apart from an outage.

        Raises:
            AuditRejected: postgres (or psycopg, before sending) refuses a
                value of the batch, e.g. a NUL in a text field: retrying the
                same batch can never succeed.
            StoreUnavailable: the server cannot be reached, or any other error.
        """
        try:
            await self._append_audit_events(events)
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, psycopg.DataError):
                raise AuditRejected(f"postgres refuses an audit event: {exc.message}") from exc
            raise
        except (ValueError, TypeError) as exc:
            if isinstance(exc, IgrisError):
                raise
            raise AuditRejected(f"postgres refuses an audit event: {type(exc).__name__}") from exc

    async def _append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        """Append a batch in one transaction, chaining per connection.

        Several replicas write at once, so each connection's chain has a
        head row ``igris_audit_heads(connection, seq, hash)``. Inside the
        batch's transaction the writer creates the head if missing and
        locks it ``FOR UPDATE``; a second writer for the same connection
        blocks there until the first commits and then reads the new head,
        so events of one connection are sealed strictly one writer after
        another while different connections proceed in parallel. Heads are
        locked in sorted slug order, so two batches spanning the same
        connections cannot deadlock. Event ids are checked after the lock
        is held, which makes a retried batch a no-op even when it races
        with its own first attempt; ``UNIQUE (connection, seq)`` backs it
        all up. The batch is one round trip per connection plus one
        pipelined ``executemany``.
        """
        if not events:
            return
        async with self._connection() as conn, conn.transaction():
            await self._append_in(conn, events)

    async def _append_in(self, conn: AsyncConnection[Any], events: Sequence[AuditEvent]) -> None:
        """``append_audit_events``'s work, in the caller's transaction."""
        if not events:
            return
        key = self._audit_key
        by_connection: dict[str, list[AuditEvent]] = {}
        for event in events:
            by_connection.setdefault(chain_name(event.connection), []).append(event)
        heads: dict[str, tuple[int, str | None]] = {}
        old_heads: dict[str | None, ChainHead | None] = {}
        for slug in sorted(by_connection):
            await conn.execute(
                "INSERT INTO igris_audit_heads (connection, seq, hash) VALUES (%s, 0, NULL) "
                "ON CONFLICT (connection) DO NOTHING",
                (slug,),
            )
            cur = await conn.execute(
                "SELECT seq, hash, key_id, mac FROM igris_audit_heads"
                " WHERE connection = %s FOR UPDATE",
                (slug,),
            )
            head = await cur.fetchone()
            assert head is not None
            heads[slug] = (int(head[0]), head[1])
            chain = slug or None
            old_heads[chain] = (
                None
                if head[3] is None
                else ChainHead(chain, int(head[0]), head[1], head[2], head[3])
            )
        cur = await conn.execute(
            "SELECT id FROM igris_audit_events WHERE id = ANY(%s)", ([e.id for e in events],)
        )
        seen = {r[0] for r in await cur.fetchall()}
        sealed: list[AuditEvent] = []
        for slug, run in by_connection.items():
            seq, last_hash = heads[slug]
            previous = attrs.evolve(run[0], seq=seq, hash=last_hash) if seq else None
            for event in run:
                if event.id in seen:
                    continue
                seen.add(event.id)
                previous = seal_event(event, previous, key)
                sealed.append(previous)
            if previous is not None and previous.seq != seq:
                heads[slug] = (previous.seq, previous.hash)
        if not sealed:
            return
        tails = {e.connection: e for e in sealed}
        # The anchor row is one lock for every writer: batches, not events, take turns.
        await conn.execute(
            "INSERT INTO igris_audit_heads (connection, seq, hash) VALUES (%s, 0, NULL) "
            "ON CONFLICT (connection) DO NOTHING",
            (ANCHOR,),
        )
        cur = await conn.execute(
            "SELECT seq, hash, key_id, mac FROM igris_audit_heads WHERE connection = %s FOR UPDATE",
            (ANCHOR,),
        )
        row = await cur.fetchone()
        assert row is not None
        anchor = None if row[3] is None else ChainAnchor(int(row[0]), row[1], row[2], row[3])
        new_heads, new_anchor = advance_heads(
            tails, {c: old_heads.get(c) for c in tails}, anchor, key
        )
        async with conn.cursor() as c:
            await c.executemany(
                _INSERT_EVENT,
                [_event_params(e) for e in sealed],
            )
            await c.executemany(
                "UPDATE igris_audit_heads SET seq = %s, hash = %s, key_id = %s, mac = %s"
                " WHERE connection = %s",
                [(h.seq, h.hash, h.key_id, h.mac, chain_name(h.chain)) for h in new_heads]
                + [
                    (
                        new_anchor.chains,
                        new_anchor.digest,
                        new_anchor.key_id,
                        new_anchor.mac,
                        ANCHOR,
                    )
                ],
            )

    async def use_audit_key(self, key: AuditKey | None) -> None:
        """Seal with ``key`` from now on; re-seal a trail from before keyed
        chains (schema migration 4 marked it) once, chain by chain."""
        self._audit_key = key
        if key is None:
            return
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM igris_audit_heads WHERE connection = '#reseal' RETURNING 1"
            )
            if await cur.fetchone() is None:
                return
            cur = await conn.execute("SELECT DISTINCT connection FROM igris_audit_events")
            tails: dict[str | None, AuditEvent] = {}
            for (name,) in await cur.fetchall():
                rows = await (
                    await conn.cursor(row_factory=dict_row).execute(
                        f"SELECT {_AUDIT_COLS} FROM igris_audit_events "  # noqa: S608
                        "WHERE connection = %s ORDER BY seq",
                        (name,),
                    )
                ).fetchall()
                events = [_event_from_row(r) for r in rows]
                if not events or verify_chain(events):
                    continue  # left as it is, for verify to report
                resealed = reseal_chain(events, key)
                async with conn.cursor() as c:
                    await c.executemany(
                        "UPDATE igris_audit_events SET prev_hash = %s, hash = %s, key_id = %s"
                        " WHERE id = %s",
                        [(e.prev_hash, e.hash, e.key_id, e.id) for e in resealed],
                    )
                tails[resealed[-1].connection] = resealed[-1]
            heads, anchor = advance_heads(tails, {}, None, key)
            async with conn.cursor() as c:
                await c.executemany(
                    "INSERT INTO igris_audit_heads (connection, seq, hash, key_id, mac)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (connection) DO UPDATE SET"
                    " seq = excluded.seq, hash = excluded.hash, key_id = excluded.key_id,"
                    " mac = excluded.mac",
                    [(chain_name(h.chain), h.seq, h.hash, h.key_id, h.mac) for h in heads]
                    + [(ANCHOR, anchor.chains, anchor.digest, anchor.key_id, anchor.mac)],
                )

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        check_limit(limit)
        sql: LiteralString = f"SELECT {_AUDIT_COLS} FROM igris_audit_events WHERE true"  # noqa: S608
        params: list[Any] = []
        if cursor is not None:
            sql += " AND id < %s"
            params.append(decode_cursor(_ALL_CURSOR, cursor))
        filters: tuple[tuple[LiteralString, Any], ...] = (
            (" AND connection = %s", query.slug),
            (" AND kind = %s", query.kind),
            (" AND action = %s", query.action),
            (" AND outcome = %s", query.outcome),
            (' AND "user" = %s', query.user),
            (" AND ts >= %s", query.since),
        )
        for clause, value in filters:
            if value is not None:
                sql += clause
                params.append(value)
        params.append(limit + 1)
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                sql + " ORDER BY id DESC LIMIT %s", params
            )
            rows = await cur.fetchall()
        items = [_event_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit and items
        return Page(items, encode_cursor(_ALL_CURSOR, items[-1].id) if more else None)

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT connection, seq, hash, key_id, mac FROM igris_audit_heads"
                " WHERE mac IS NOT NULL"
            )
            rows = await cur.fetchall()
        heads: dict[str | None, ChainHead] = {}
        anchor = None
        for name, seq, hash_, key_id, mac in rows:
            if name == ANCHOR:
                anchor = ChainAnchor(int(seq), hash_, key_id, mac)
            else:
                heads[name or None] = ChainHead(name or None, int(seq), hash_, key_id, mac)
        return heads, anchor

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        query: LiteralString = f"SELECT {_AUDIT_COLS} FROM igris_audit_events WHERE connection = %s"  # noqa: S608
        check_limit(limit)
        params: list[Any] = [chain_name(connection)]
        if cursor is not None:
            query += " AND seq < %s"
            params.append(decode_seq_cursor(_AUDIT_CURSOR, cursor))
        if since is not None:
            query += " AND ts >= %s"
            params.append(since)
        params.append(limit + 1)
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                query + " ORDER BY seq DESC LIMIT %s", params
            )
            rows = await cur.fetchall()
        items = [_event_from_row(r) for r in rows[:limit]]
        more = len(rows) > limit and items
        return Page(items, encode_cursor(_AUDIT_CURSOR, str(items[-1].seq)) if more else None)

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        check_limit(limit)
        async with self._connection() as conn:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"SELECT {_AUDIT_COLS} FROM igris_audit_events "  # noqa: S608
                "WHERE connection = %s AND seq > %s ORDER BY seq LIMIT %s",
                (chain_name(connection), after_seq, limit),
            )
            rows = await cur.fetchall()
        return [_event_from_row(r) for r in rows]

    async def audit_connections(self) -> list[str]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT connection FROM igris_audit_heads WHERE seq > 0"
                " AND connection NOT IN ('', '#anchor') ORDER BY connection"
            )
            rows = await cur.fetchall()
        return [r[0] for r in rows]
