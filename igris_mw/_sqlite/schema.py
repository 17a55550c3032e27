"""The SQLite store's schema and the mapping between its rows and records.

Times are stored as integer milliseconds since the epoch (UTC); an audit
event is stored as its own ``to_json()`` text, so it reads back equal and its
hash recomputes byte for byte.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta

from ..models import (
    ApiKey,
    AuditEvent,
    AuthType,
    Connection,
    OAuthGrant,
    Scope,
    TlsConfig,
    policy_from_json,
)

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "body_to_event",
    "from_ms",
    "row_to_api_key",
    "row_to_connection",
    "row_to_grant",
    "to_ms",
    "to_ms_ceil",
    "to_ms_opt",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Each entry migrates from version i to i + 1; never edit a released entry, append.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE connections (
            slug TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            upstream_url TEXT NOT NULL,
            auth_type TEXT NOT NULL,
            header_name TEXT,
            enabled INTEGER NOT NULL,
            credential_version INTEGER NOT NULL,
            ciphertext BLOB,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            rotated_at INTEGER,
            version INTEGER NOT NULL
        )""",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash BLOB NOT NULL UNIQUE,
            scopes TEXT NOT NULL,
            connections TEXT,
            created_at INTEGER NOT NULL,
            expires_at INTEGER,
            revoked_at INTEGER
        )""",
        """CREATE TABLE audit_events (
            connection TEXT NOT NULL,
            seq INTEGER NOT NULL,
            id TEXT NOT NULL UNIQUE,
            timestamp INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (connection, seq)
        ) WITHOUT ROWID""",
        "CREATE INDEX audit_events_time ON audit_events (connection, timestamp)",
    ],
    # 2: a connection's TLS material (models.TlsConfig.to_text; the client key sealed)
    ["ALTER TABLE connections ADD COLUMN tls TEXT"],
    [
        # 3: access policy (rateLimit, tools, maxConcurrent) as one JSON text; NULL: none.
        "ALTER TABLE connections ADD COLUMN policy TEXT",
        "ALTER TABLE api_keys ADD COLUMN policy TEXT",
    ],
    # 4 (issue 10): keyed chains. One signed head per chain and the anchor
    # over them ('#anchor'); a trail written before keys is marked for
    # re-sealing ('#reseal'), done by the first use_audit_key.
    [
        "CREATE TABLE audit_heads (chain TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO audit_heads (chain, body) SELECT '#reseal', '{}'"
        " WHERE EXISTS (SELECT 1 FROM audit_events)",
    ],
    # 5: OAuth and per-user credentials
    [
        # The oauth object of OAuth connections (JSON, never a secret), the
        # credential scope, the user an API key is bound to, and per-user or
        # OAuth credentials: sealed per (connection, user; "" for the
        # connection's own), written by compare-and-set on ``version``.
        "ALTER TABLE connections ADD COLUMN oauth TEXT",
        "ALTER TABLE connections ADD COLUMN credential_scope TEXT NOT NULL DEFAULT 'shared'",
        "ALTER TABLE api_keys ADD COLUMN user TEXT",
        """CREATE TABLE oauth_grants (
            slug TEXT NOT NULL,
            user TEXT NOT NULL,
            ciphertext BLOB,
            expires_at INTEGER,
            lifetime REAL,
            status TEXT NOT NULL,
            lease_until INTEGER,
            version INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (slug, user)
        ) WITHOUT ROWID""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)


def to_ms(value: datetime) -> int:
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def to_ms_opt(value: datetime | None) -> int | None:
    return None if value is None else to_ms(value)


def from_ms(value: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=value)


def from_ms_opt(value: int | None) -> datetime | None:
    return None if value is None else from_ms(value)


def row_to_connection(row: sqlite3.Row) -> Connection:
    return Connection(
        slug=row["slug"],
        name=row["name"],
        upstream_url=row["upstream_url"],
        auth_type=AuthType(row["auth_type"]),
        header_name=row["header_name"],
        enabled=bool(row["enabled"]),
        credential_version=row["credential_version"],
        ciphertext=None if row["ciphertext"] is None else bytes(row["ciphertext"]),
        created_at=from_ms(row["created_at"]),
        updated_at=from_ms(row["updated_at"]),
        rotated_at=from_ms_opt(row["rotated_at"]),
        version=row["version"],
        tls=TlsConfig.from_text(row["tls"]),
        **policy_from_json(row["policy"]),
        oauth=None if row["oauth"] is None else json.loads(row["oauth"]),
        credential_scope=row["credential_scope"],
    )


def row_to_grant(row: sqlite3.Row) -> OAuthGrant:
    return OAuthGrant(
        slug=row["slug"],
        user=row["user"],
        ciphertext=None if row["ciphertext"] is None else bytes(row["ciphertext"]),
        expires_at=from_ms_opt(row["expires_at"]),
        lifetime=row["lifetime"],
        status=row["status"],
        lease_until=from_ms_opt(row["lease_until"]),
        version=row["version"],
        updated_at=from_ms(row["updated_at"]),
    )


def row_to_api_key(row: sqlite3.Row) -> ApiKey:
    connections = row["connections"]
    return ApiKey(
        id=row["id"],
        name=row["name"],
        key_hash=bytes(row["key_hash"]),
        scopes=frozenset(Scope(s) for s in json.loads(row["scopes"])),
        connections=None if connections is None else frozenset(json.loads(connections)),
        created_at=from_ms(row["created_at"]),
        expires_at=from_ms_opt(row["expires_at"]),
        revoked_at=from_ms_opt(row["revoked_at"]),
        **policy_from_json(row["policy"]),
        user=row["user"],
    )


def body_to_event(body: str) -> AuditEvent:
    # Built from the event's own to_json(), so its hash recomputes byte for byte.
    return AuditEvent.from_json(json.loads(body))


def to_ms_ceil(value: datetime) -> int:
    ms = to_ms(value)
    return ms + 1 if value.astimezone(UTC).microsecond % 1000 else ms
