"""The embedded default store: one SQLite file.

``sqlite:///rel.db`` (relative to the working directory),
``sqlite:////abs/path.db`` and ``sqlite:///:memory:``, as SQLAlchemy reads
them. The file is created mode 0600 (its parent directory 0700 when this
creates it) before SQLite opens it; SQLite gives the ``-wal`` and ``-shm``
files the same mode.

All sqlite3 work runs on one dedicated worker thread that owns the only
connection, so the event loop never blocks on disk I/O and every statement
is serialised. The database is in WAL mode with a busy timeout, so other
processes (``serve --workers N``, the CLI, ``audit --follow``) use the file
too. Writes by other processes reach ``add_listener`` callbacks
(``notifies_remote``): every write to a connection or a key also appends a
row to the ``igris_changes`` table in the same transaction, and the worker
thread polls ``PRAGMA data_version`` every ``CHANGE_POLL`` seconds (a read
of a counter in shared memory: no I/O while nothing changed); when another
connection has committed, the new ``igris_changes`` rows written by other
store objects become ``Change`` notices. So a change made anywhere is
honoured within ``CHANGE_POLL`` plus one store read (docs/workers.md).

sqlite3 errors are translated in ``SQLiteStore._run`` and nowhere else.
Times are stored as integer milliseconds since the epoch (UTC).

Longer than the house's 400 lines on purpose: it is one class, one method
per ``Store`` operation, each a short statement run through ``_run``;
splitting it would scatter the one-thread rule over several files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import attrs

from .._audit.chain import (
    ANCHOR,
    GLOBAL,
    AuditKey,
    ChainAnchor,
    ChainHead,
    Tail,
    advance_heads,
    chain_name,
    reseal_chain,
    seal_event_text,
    verify_chain,
)
from .._errors import (
    AuditRejected,
    ConfigurationError,
    Conflict,
    IgrisError,
    NotFound,
    SlugTaken,
    StoreUnavailable,
    VersionConflict,
)
from .._paging import (
    check_limit,
    decode_cursor,
    decode_seq_cursor,
    decode_slug_cursor,
    encode_cursor,
)
from ..models import (
    ApiKey,
    AuditEvent,
    AuthType,
    Connection,
    OAuthGrant,
    Page,
    Scope,
    policy_to_json,
    tls_text,
)
from ..storage import (
    AuditQuery,
    Capabilities,
    Change,
    ChangeListener,
    notify_listeners,
)
from .schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    body_to_event,
    from_ms,
    row_to_api_key,
    row_to_connection,
    row_to_grant,
    to_ms,
    to_ms_ceil,
    to_ms_opt,
)

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

T = TypeVar("T")

_BUSY_TIMEOUT = 10.0
# How often each store object looks for writes made by other processes.
CHANGE_POLL = 0.1
# Audit events sealed between two GIL hand-offs in the writer thread (the
# event loop's 1 ms timer was late by p99 18.5 -> 9.7 ms with this, under a
# continuous 100-event append on a loaded machine: benchmarks/README.md).
_SEALS_PER_HOLD = 8
# Rows of igris_changes kept; a poller further behind than this hears Change("all").
_CHANGES_KEPT = 1000
_log = logging.getLogger("igris_mw.sqlite")
_CONN_CURSOR = b"sc1:"
_AUDIT_CURSOR = b"sa1:"
_ALL_CURSOR = b"sall1:"


@contextmanager
def _transaction(db: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-modify-write (the
    # audit chain's tail, a guarded update) cannot race another process.
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _stored_ids(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(ids), 500):  # stay under SQLite's variable limit
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        query = f"SELECT id FROM audit_events WHERE id IN ({marks})"  # noqa: S608 (only '?'s)
        found.update(row[0] for row in db.execute(query, chunk))
    return found


class SQLiteStore:
    """The embedded ``Store``: one SQLite file, driven from one worker thread.

    Args:
        path: the database file (``":memory:"`` for a private in-memory one).
        busy_timeout: seconds to wait for another process's write lock
            before ``StoreUnavailable``.
    """

    capabilities = Capabilities(shared=True, notifies_remote=True, audit=True)

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = _BUSY_TIMEOUT
    ) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        if self.path == ":memory:":
            # A private database: no other process can write to it.
            self.capabilities = Capabilities(shared=False, notifies_remote=False, audit=True)
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._listeners: list[ChangeListener] = []
        # Marks this object's own rows in igris_changes: its listeners heard those already.
        self._origin = secrets.token_hex(8)
        self._data_version = 0
        self._last_change = 0
        self._poller: asyncio.Task[None] | None = None
        self._audit_key: AuditKey | None = None

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``.

        Raises:
            ConfigurationError: not such a URL.
        """
        prefix = "sqlite:///"
        if not isinstance(url, str) or not url.lower().startswith(prefix):
            raise ConfigurationError(
                "a SQLite store URL looks like sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db"
            )
        path = url[len(prefix) :]
        if not path or "?" in path or "#" in path:
            raise ConfigurationError(
                f"the SQLite store URL {url!r} needs a file path and takes no query; "
                "e.g. sqlite:///igris.db"
            )
        return cls(path)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- the one boundary to sqlite3 -----------------------------------------
    async def _run(
        self,
        fn: Callable[[sqlite3.Connection], T],
        *,
        on_conflict: Callable[[], IgrisError] | None = None,
    ) -> T:
        if self._executor is None or self._db is None:
            raise StoreUnavailable(f"the SQLite store {self.path!r} is not open")
        db = self._db
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, db)
        except sqlite3.IntegrityError as exc:
            if on_conflict is None:
                raise Conflict("the write conflicts with a stored record") from exc
            raise on_conflict() from exc
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc
        except RuntimeError as exc:
            # The executor was shut down by a concurrent close().
            raise StoreUnavailable(f"the SQLite store {self.path!r} is closed") from exc

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        reason = str(exc.args[0]) if exc.args else type(exc).__name__
        if "locked" in reason or "busy" in reason:
            hint = "; another process holds a write lock on it for too long"
        elif "unable to open" in reason:
            hint = "; check that the path exists and is writable"
        else:
            hint = ""
        return StoreUnavailable(f"the SQLite store {self.path!r} is unavailable: {reason}{hint}")

    # -- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        """Create the file (0600) if needed, connect, and migrate the schema.

        Raises:
            ConfigurationError: the database's schema is newer than this code.
            StoreUnavailable: the file cannot be created or opened.
        """
        if self._db is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="igris-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._db = await loop.run_in_executor(executor, self._connect)
        except sqlite3.Error as exc:
            executor.shutdown(wait=False)
            raise self._unavailable(exc) from exc
        except OSError as exc:
            executor.shutdown(wait=False)
            raise StoreUnavailable(
                f"the SQLite store {self.path!r} cannot be created: {exc.strerror}"
            ) from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        if self.path != ":memory:":
            self._poller = loop.create_task(self._poll_changes(), name="igris-sqlite-changes")

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            self._create_file()
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                db.execute("PRAGMA journal_mode = WAL")
                # Safe in WAL mode: a power cut may lose the last commits, never corrupt.
                db.execute("PRAGMA synchronous = NORMAL")
            self._migrate(db)
            if self.path != ":memory:":
                # Outside the numbered migrations: a notification channel, not
                # data; older igris-mw versions open the file unchanged.
                db.execute(
                    "CREATE TABLE IF NOT EXISTS igris_changes (id INTEGER PRIMARY KEY"
                    " AUTOINCREMENT, origin TEXT NOT NULL, kind TEXT NOT NULL, key TEXT)"
                )
                self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
                self._last_change = db.execute(
                    "SELECT coalesce(max(id), 0) FROM igris_changes"
                ).fetchone()[0]
        except BaseException:
            db.close()
            raise
        return db

    def _create_file(self) -> None:
        path = Path(self.path)
        # Path.mkdir(parents=True) would give the intermediate directories the umask's mode.
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        os.close(fd)

    def _migrate(self, db: sqlite3.Connection) -> None:
        with _transaction(db):
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the SQLite store {self.path!r} has schema version {current}, newer than "
                    f"this igris-mw knows ({SCHEMA_VERSION}); upgrade igris-mw"
                )
            for version in range(current, SCHEMA_VERSION):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))

    async def close(self) -> None:
        """Close the connection and stop the worker thread; idempotent."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is None or executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        finally:
            executor.shutdown(wait=False)

    # -- change notification -------------------------------------------------
    def add_listener(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _notify(self, change: Change) -> None:
        notify_listeners(self._listeners, change)

    def _record(self, db: sqlite3.Connection, change: Change) -> None:
        """Log ``change`` for the other processes' pollers, in the write's transaction."""
        if self.path == ":memory:":
            return
        cur = db.execute(
            "INSERT INTO igris_changes (origin, kind, key) VALUES (?, ?, ?)",
            (self._origin, change.kind, change.key),
        )
        if cur.lastrowid is not None and cur.lastrowid % 100 == 0:
            db.execute("DELETE FROM igris_changes WHERE id <= ?", (cur.lastrowid - _CHANGES_KEPT,))

    def _changes_since(self, db: sqlite3.Connection) -> list[Change]:
        # PRAGMA data_version changes only when another connection commits;
        # reading it touches no page while nothing did.
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return []
        self._data_version = version
        rows = db.execute(
            "SELECT id, origin, kind, key FROM igris_changes WHERE id > ? ORDER BY id",
            (self._last_change,),
        ).fetchall()
        if not rows:
            return []  # an audit append, or a change of ours
        missed = rows[0][0] > self._last_change + 1
        self._last_change = rows[-1][0]
        if missed:
            return [Change("all")]  # rows pruned before this poller read them
        return [Change(kind, key) for _, origin, kind, key in rows if origin != self._origin]

    async def _poll_changes(self) -> None:
        while True:
            await asyncio.sleep(CHANGE_POLL)
            try:
                changes = await self._run(self._changes_since)
            except StoreUnavailable as exc:
                # The cache TTL stays the backstop; the next poll tries again.
                _log.debug("polling the SQLite store for changes failed: %s", exc)
                continue
            for change in changes:
                self._notify(change)

    # -- connections -----------------------------------------------------
    async def create_connection(
        self, connection: Connection, *, audit_events: Sequence[AuditEvent] = ()
    ) -> Connection:
        events, key = list(audit_events), self._audit_key

        def insert(db: sqlite3.Connection) -> Connection:
            with _transaction(db):
                db.execute(
                    "INSERT INTO connections (slug, name, upstream_url, auth_type, header_name,"
                    " enabled, credential_version, ciphertext, tls, policy, oauth,"
                    " credential_scope, created_at, updated_at, rotated_at, version)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                    (
                        connection.slug,
                        *self._mutable(connection),
                        to_ms(connection.created_at),
                        to_ms(connection.updated_at),
                        to_ms_opt(connection.rotated_at),
                    ),
                )
                self._record(db, Change("connection", connection.slug))
                _append_in(db, events, key)
                return self._select_connection(db, connection.slug)

        stored = await self._run(
            insert, on_conflict=lambda: SlugTaken(f"the slug {connection.slug!r} is taken")
        )
        self._notify(Change("connection", stored.slug))
        return stored

    @staticmethod
    def _mutable(c: Connection) -> tuple[Any, ...]:
        return (
            c.name,
            c.upstream_url,
            AuthType(c.auth_type).value,
            c.header_name,
            int(c.enabled),
            c.credential_version,
            c.ciphertext,
            tls_text(c.tls),
            policy_to_json(c),
            None if c.oauth is None else json.dumps(dict(c.oauth)),
            c.credential_scope,
        )

    @staticmethod
    def _select_connection(db: sqlite3.Connection, slug: str) -> Connection:
        row = db.execute("SELECT * FROM connections WHERE slug = ?", (slug,)).fetchone()
        if row is None:
            raise NotFound(f"no connection {slug!r}")
        return row_to_connection(row)

    async def get_connection(self, slug: str) -> Connection:
        return await self._run(lambda db: self._select_connection(db, slug))

    async def list_connections(
        self, *, limit: int = 50, cursor: str | None = None
    ) -> Page[Connection]:
        check_limit(limit)
        after = "" if cursor is None else decode_slug_cursor(_CONN_CURSOR, cursor)

        def select(db: sqlite3.Connection) -> list[Connection]:
            rows = db.execute(
                "SELECT * FROM connections WHERE slug > ? ORDER BY slug LIMIT ?",
                (after, limit + 1),
            ).fetchall()
            return [row_to_connection(r) for r in rows]

        found = await self._run(select)
        items = found[:limit]
        more = len(found) > limit
        return Page(items, encode_cursor(_CONN_CURSOR, items[-1].slug) if more else None)

    async def update_connection(
        self,
        connection: Connection,
        *,
        expected_version: int,
        audit_events: Sequence[AuditEvent] = (),
    ) -> Connection:
        slug = connection.slug
        events, key = list(audit_events), self._audit_key

        def update(db: sqlite3.Connection) -> Connection:
            with _transaction(db):
                cur = db.execute(
                    "UPDATE connections SET name = ?, upstream_url = ?, auth_type = ?,"
                    " header_name = ?, enabled = ?, credential_version = ?, ciphertext = ?,"
                    " tls = ?, policy = ?, oauth = ?, credential_scope = ?, updated_at = ?,"
                    " rotated_at = ?, version = version + 1"
                    " WHERE slug = ? AND version = ?",
                    (
                        *self._mutable(connection),
                        to_ms(connection.updated_at),
                        to_ms_opt(connection.rotated_at),
                        slug,
                        expected_version,
                    ),
                )
                stored = self._select_connection(db, slug)
                if cur.rowcount == 0:
                    raise VersionConflict(
                        f"connection {slug!r} changed meanwhile "
                        f"(version {stored.version}, expected {expected_version})"
                    )
                self._record(db, Change("connection", slug))
                _append_in(db, events, key)
                return stored

        stored = await self._run(update)
        self._notify(Change("connection", slug))
        return stored

    async def delete_connection(
        self, slug: str, *, audit_events: Sequence[AuditEvent] = ()
    ) -> None:
        events, key = list(audit_events), self._audit_key

        def delete(db: sqlite3.Connection) -> None:
            with _transaction(db):
                cur = db.execute("DELETE FROM connections WHERE slug = ?", (slug,))
                if cur.rowcount == 0:
                    raise NotFound(f"no connection {slug!r}")
                db.execute("DELETE FROM oauth_grants WHERE slug = ?", (slug,))
                self._record(db, Change("connection", slug))
                _append_in(db, events, key)

        await self._run(delete)
        self._notify(Change("connection", slug))

    # -- OAuth grants ----------------------------------------------------
    async def get_oauth_grant(self, slug: str, user: str = "") -> OAuthGrant | None:
        def select(db: sqlite3.Connection) -> OAuthGrant | None:
            row = db.execute(
                "SELECT * FROM oauth_grants WHERE slug = ? AND user = ?", (slug, user)
            ).fetchone()
            return None if row is None else row_to_grant(row)

        return await self._run(select)

    async def list_oauth_grants(self, slug: str) -> list[OAuthGrant]:
        def select(db: sqlite3.Connection) -> list[OAuthGrant]:
            rows = db.execute(
                "SELECT * FROM oauth_grants WHERE slug = ? ORDER BY user", (slug,)
            ).fetchall()
            return [row_to_grant(r) for r in rows]

        return await self._run(select)

    async def put_oauth_grant(self, grant: OAuthGrant, *, expected_version: int) -> bool:
        g = grant
        values = (
            g.ciphertext,
            to_ms_opt(g.expires_at),
            g.lifetime,
            g.status,
            to_ms_opt(g.lease_until),
            expected_version + 1,
            to_ms(g.updated_at),
        )

        def put(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                if expected_version == 0:
                    cur = db.execute(
                        "INSERT INTO oauth_grants (ciphertext, expires_at, lifetime, status,"
                        " lease_until, version, updated_at, slug, user)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (*values, g.slug, g.user),
                    )
                else:
                    cur = db.execute(
                        "UPDATE oauth_grants SET ciphertext = ?, expires_at = ?, lifetime = ?,"
                        " status = ?, lease_until = ?, version = ?, updated_at = ?"
                        " WHERE slug = ? AND user = ? AND version = ?",
                        (*values, g.slug, g.user, expected_version),
                    )
                return cur.rowcount == 1

        return await self._run(put)

    async def delete_oauth_grants(self, slug: str, user: str | None = None) -> None:
        def delete(db: sqlite3.Connection) -> None:
            with _transaction(db):
                if user is None:
                    db.execute("DELETE FROM oauth_grants WHERE slug = ?", (slug,))
                else:
                    db.execute("DELETE FROM oauth_grants WHERE slug = ? AND user = ?", (slug, user))

        await self._run(delete)

    # -- gateway API keys ------------------------------------------------
    async def create_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        events, audit_key = list(audit_events), self._audit_key

        def insert(db: sqlite3.Connection) -> ApiKey:
            with _transaction(db):
                db.execute(
                    "INSERT INTO api_keys (id, name, key_hash, scopes, connections, created_at,"
                    " expires_at, revoked_at, policy, user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.id,
                        key.name,
                        key.key_hash,
                        json.dumps(sorted(Scope(s).value for s in key.scopes)),
                        None if key.connections is None else json.dumps(sorted(key.connections)),
                        to_ms(key.created_at),
                        to_ms_opt(key.expires_at),
                        to_ms_opt(key.revoked_at),
                        policy_to_json(key),
                        key.user,
                    ),
                )
                _append_in(db, events, audit_key)
                row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key.id,)).fetchone()
                self._record(db, Change("api_key", key.id))
                return row_to_api_key(row)

        stored = await self._run(
            insert, on_conflict=lambda: Conflict("an API key with this id or hash exists")
        )
        self._notify(Change("api_key", stored.id))
        return stored

    async def get_api_key_by_hash(self, key_hash: bytes) -> ApiKey | None:
        def select(db: sqlite3.Connection) -> ApiKey | None:
            row = db.execute("SELECT * FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
            return None if row is None else row_to_api_key(row)

        return await self._run(select)

    async def list_api_keys(self) -> list[ApiKey]:
        def select(db: sqlite3.Connection) -> list[ApiKey]:
            rows = db.execute("SELECT * FROM api_keys ORDER BY created_at, rowid").fetchall()
            return [row_to_api_key(r) for r in rows]

        return await self._run(select)

    async def update_api_key(
        self, key: ApiKey, *, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        events, audit_key = list(audit_events), self._audit_key

        def update(db: sqlite3.Connection) -> ApiKey:
            with _transaction(db):
                db.execute(
                    "UPDATE api_keys SET name = ?, connections = ?, expires_at = ?, policy = ?"
                    " WHERE id = ?",
                    (
                        key.name,
                        None if key.connections is None else json.dumps(sorted(key.connections)),
                        to_ms_opt(key.expires_at),
                        policy_to_json(key),
                        key.id,
                    ),
                )
                row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key.id,)).fetchone()
                if row is None:
                    raise NotFound(f"no API key {key.id!r}")
                _append_in(db, events, audit_key)
                self._record(db, Change("api_key", key.id))
                return row_to_api_key(row)

        stored = await self._run(update)
        self._notify(Change("api_key", key.id))
        return stored

    async def revoke_api_key(
        self, key_id: str, *, at: datetime, audit_events: Sequence[AuditEvent] = ()
    ) -> ApiKey:
        events, key = list(audit_events), self._audit_key

        def revoke(db: sqlite3.Connection) -> ApiKey:
            with _transaction(db):
                db.execute(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?",
                    (to_ms(at), key_id),
                )
                row = db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
                if row is None:
                    raise NotFound(f"no API key {key_id!r}")
                self._record(db, Change("api_key", key_id))
                _append_in(db, events, key)
                return row_to_api_key(row)

        stored = await self._run(revoke)
        self._notify(Change("api_key", key_id))
        return stored

    # -- audit -----------------------------------------------------------
    async def use_audit_key(self, key: AuditKey | None) -> None:
        """Seal with ``key`` from now on; a trail from before keyed chains
        (schema migration 4 marked it) is re-sealed under it now, once."""
        self._audit_key = key
        if key is not None:
            await self._run(lambda db: _reseal(db, key))

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        pending = list(events)
        key = self._audit_key

        def append(db: sqlite3.Connection) -> None:
            with _transaction(db):
                _append_in(db, pending, key)

        try:
            await self._run(append)
        except StoreUnavailable as exc:
            # A value sqlite3 cannot bind or store is the data's fault, not an outage.
            if isinstance(exc.__cause__, sqlite3.DataError | sqlite3.InterfaceError):
                raise AuditRejected(f"the SQLite store refuses an audit event: {exc}") from exc
            raise
        except (ValueError, TypeError) as exc:
            if isinstance(exc, IgrisError):
                raise
            raise AuditRejected(
                f"the SQLite store refuses an audit event: {type(exc).__name__}"
            ) from exc

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        check_limit(limit)
        sql = "SELECT body FROM audit_events WHERE 1 = 1"
        params: list[Any] = []
        if cursor is not None:
            sql += " AND id < ?"
            params.append(decode_cursor(_ALL_CURSOR, cursor))
        if query.slug is not None:
            sql += " AND connection = ?"
            params.append(query.slug)
        if query.since is not None:
            sql += " AND timestamp >= ?"
            params.append(to_ms_ceil(query.since))
        # The other fields live in the event's JSON text only.
        for path, value in (
            ("$.kind", query.kind),
            ("$.action", query.action),
            ("$.outcome", query.outcome),
            ("$.user", query.user),
        ):
            if value is not None:
                sql += f" AND json_extract(body, '{path}') = ?"
                params.append(value)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)

        def select(db: sqlite3.Connection) -> list[AuditEvent]:
            return [body_to_event(r[0]) for r in db.execute(sql, params).fetchall()]

        found = await self._run(select)
        items = found[:limit]
        more = len(found) > limit
        return Page(items, encode_cursor(_ALL_CURSOR, items[-1].id) if more else None)

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        def select(
            db: sqlite3.Connection,
        ) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
            heads: dict[str | None, ChainHead] = {}
            anchor = None
            for name, body in db.execute("SELECT chain, body FROM audit_heads").fetchall():
                if name == ANCHOR:
                    anchor = ChainAnchor.from_json(json.loads(body))
                elif not name.startswith("#"):
                    head = ChainHead.from_json(json.loads(body))
                    heads[head.chain] = head
            return heads, anchor

        return await self._run(select)

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        check_limit(limit)
        before = 2**62
        if cursor is not None:
            before = decode_seq_cursor(_AUDIT_CURSOR, cursor, connection=chain_name(connection))
        # Stored times are whole milliseconds: an event at .500 is before since=.5004.
        since_ms = -(2**62) if since is None else to_ms_ceil(since)

        def select(db: sqlite3.Connection) -> list[AuditEvent]:
            rows = db.execute(
                "SELECT body FROM audit_events WHERE connection = ? AND seq < ?"
                " AND timestamp >= ? ORDER BY seq DESC LIMIT ?",
                (chain_name(connection), before, since_ms, limit + 1),
            ).fetchall()
            return [body_to_event(r[0]) for r in rows]

        found = await self._run(select)
        items = found[:limit]
        more = len(found) > limit
        if not more:
            return Page(items)
        return Page(
            items, encode_cursor(_AUDIT_CURSOR, f"{items[-1].seq}:{chain_name(connection)}")
        )

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        def select(db: sqlite3.Connection) -> list[AuditEvent]:
            rows = db.execute(
                "SELECT body FROM audit_events WHERE connection = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (chain_name(connection), after_seq, limit),
            ).fetchall()
            return [body_to_event(r[0]) for r in rows]

        return await self._run(select)

    async def audit_connections(self) -> list[str]:
        def select(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT DISTINCT connection FROM audit_events WHERE connection != ''"
                " ORDER BY connection"
            )
            return [r[0] for r in rows.fetchall()]

        return await self._run(select)


class _Tail(NamedTuple):
    """A chain's last sealed event, as much of it as the next one needs."""

    seq: int
    hash: str | None


def _append_in(db: sqlite3.Connection, pending: list[AuditEvent], key: AuditKey | None) -> None:
    """Seal and insert ``pending`` with their heads, in the caller's transaction."""
    tails: dict[str | None, _Tail | None] = {}
    # One query for the batch's ids, not one per event: a retried
    # batch (outcome unknown to the writer) is a no-op.
    seen = _stored_ids(db, [e.id for e in pending])
    rows = []
    for index, event in enumerate(pending):
        if index % _SEALS_PER_HOLD == _SEALS_PER_HOLD - 1:
            # Sealing is Python holding the GIL; hand it to the event loop's
            # thread now and then, or a request waits out the batch.
            time.sleep(0)
        if event.id in seen:
            continue
        seen.add(event.id)
        if event.timestamp.microsecond % 1000:
            # Stored and hashed at the same (millisecond) precision.
            event = attrs.evolve(event, timestamp=from_ms(to_ms(event.timestamp)))
        connection = event.connection
        name = GLOBAL if connection is None else connection
        tail = tails[connection] if connection in tails else _stored_tail(db, name)
        seq = 1 if tail is None else tail.seq + 1
        digest, body = seal_event_text(event, seq, None if tail is None else tail.hash, key)
        rows.append((name, seq, event.id, to_ms(event.timestamp), body))
        tails[connection] = _Tail(seq, digest)
    if not rows:
        return
    db.executemany(
        "INSERT INTO audit_events (connection, seq, id, timestamp, body) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    _write_heads(db, {c: t for c, t in tails.items() if t is not None}, key)


def _stored_tail(db: sqlite3.Connection, name: str) -> _Tail | None:
    """The chain's last stored event's seq and hash (``None``: no event yet)."""
    # SQLite reads the two out of the JSON text: no AuditEvent is parsed back.
    try:
        row = db.execute(
            "SELECT seq, json_extract(body, '$.hash'), json_type(body, '$.hash')"
            " FROM audit_events"
            " WHERE connection = ? ORDER BY seq DESC LIMIT 1",
            (name,),
        ).fetchone()
    except sqlite3.OperationalError:
        row = (0, None, "malformed JSON")
    if row is not None and row[2] != "text":
        # No hash text (an event sealed by no store, or a damaged row): parsed
        # back whole as before, so a damaged row still raises ValueError (AuditRejected).
        body = db.execute(
            "SELECT body FROM audit_events WHERE connection = ? ORDER BY seq DESC LIMIT 1",
            (name,),
        ).fetchone()[0]
        event = body_to_event(body)
        return _Tail(event.seq, event.hash)
    return None if row is None else _Tail(row[0], row[1])


def _read_head(db: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    row = db.execute("SELECT body FROM audit_heads WHERE chain = ?", (name,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def _write_heads(
    db: sqlite3.Connection, tails: Mapping[str | None, Tail], key: AuditKey | None
) -> None:
    """The touched chains' heads and the anchor, in the caller's transaction."""
    names = [chain_name(chain) for chain in tails]
    marks = ",".join("?" * (len(names) + 1))  # a batch touches few chains: under the limit
    stored = dict(
        db.execute(
            f"SELECT chain, body FROM audit_heads WHERE chain IN ({marks})",  # noqa: S608 (only '?'s)
            (*names, ANCHOR),
        ).fetchall()
    )
    old: dict[str | None, ChainHead | None] = {}
    for chain, name in zip(tails, names, strict=True):
        body = stored.get(name)
        old[chain] = None if body is None else ChainHead.from_json(json.loads(body))
    anchor_body = stored.get(ANCHOR)
    anchor = None if anchor_body is None else ChainAnchor.from_json(json.loads(anchor_body))
    heads, new_anchor = advance_heads(tails, old, anchor, key)
    db.executemany(
        "INSERT OR REPLACE INTO audit_heads (chain, body) VALUES (?, ?)",
        [(chain_name(h.chain), json.dumps(h.to_json())) for h in heads]
        + [(ANCHOR, json.dumps(new_anchor.to_json()))],
    )


def _reseal(db: sqlite3.Connection, key: AuditKey) -> None:
    """Migration 4's second half: every unkeyed chain that verifies as it
    stands is sealed again under ``key`` (same ids, order and seqs), and
    gets its head. A chain that does not verify is left as it is, so
    ``audit verify`` keeps reporting it rather than the re-seal vouching for it."""
    with _transaction(db):
        if _read_head(db, "#reseal") is None:
            return
        names = [r[0] for r in db.execute("SELECT DISTINCT connection FROM audit_events")]
        tails: dict[str | None, AuditEvent] = {}
        for name in names:
            rows = db.execute(
                "SELECT body FROM audit_events WHERE connection = ? ORDER BY seq", (name,)
            ).fetchall()
            events = [body_to_event(r[0]) for r in rows]
            if not events or verify_chain(events):
                continue
            resealed = reseal_chain(events, key)
            db.executemany(
                "UPDATE audit_events SET body = ? WHERE connection = ? AND seq = ?",
                [(json.dumps(e.to_json(), separators=(",", ":")), name, e.seq) for e in resealed],
            )
            tails[resealed[-1].connection] = resealed[-1]
        if tails:
            _write_heads(db, tails, key)
        db.execute("DELETE FROM audit_heads WHERE chain = '#reseal'")
