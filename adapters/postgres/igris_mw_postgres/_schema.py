"""Schema migrations, recorded in ``igris_schema_version``.

Every table carries an ``igris_`` prefix so the store can share a database
with an application. Slug columns use the ``C`` collation so that listings
sort by code point, the same order as Python's ``sorted`` and the other
stores, whatever the database's locale.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from igris_mw.errors import ConfigurationError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

# Any constant works; it only has to be the same in every process that
# migrates this database, so two gateways starting at once take turns.
_MIGRATION_LOCK = 0x1691_5000

MIGRATIONS: tuple[str, ...] = (
    # 1: connections, API keys, audit trail with one chain head per connection
    """
    CREATE TABLE igris_connections (
        slug text COLLATE "C" PRIMARY KEY,
        name text NOT NULL,
        upstream_url text NOT NULL,
        auth_type text NOT NULL,
        header_name text,
        enabled boolean NOT NULL,
        credential_version integer NOT NULL,
        ciphertext bytea,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        rotated_at timestamptz,
        version integer NOT NULL
    );
    CREATE TABLE igris_api_keys (
        id text PRIMARY KEY,
        name text NOT NULL,
        key_hash bytea NOT NULL UNIQUE,
        scopes text[] NOT NULL,
        connections text[],
        created_at timestamptz NOT NULL,
        expires_at timestamptz,
        revoked_at timestamptz,
        ord bigserial NOT NULL
    );
    CREATE TABLE igris_audit_heads (
        connection text COLLATE "C" PRIMARY KEY,
        seq bigint NOT NULL,
        hash text
    );
    CREATE TABLE igris_audit_events (
        id text PRIMARY KEY,
        connection text COLLATE "C" NOT NULL,
        seq bigint NOT NULL,
        ts timestamptz NOT NULL,
        kind text NOT NULL,
        action text,
        api_key_id text,
        "user" text,
        metadata text,
        method text,
        path text,
        rpc_method text,
        tool text,
        status integer,
        outcome text NOT NULL,
        latency_ms double precision,
        bytes_in bigint NOT NULL,
        bytes_out bigint NOT NULL,
        credential_version integer,
        prev_hash text,
        hash text NOT NULL,
        -- the last line of defence: a chain can never fork, whatever a writer does
        UNIQUE (connection, seq)
    );
    CREATE INDEX igris_audit_events_ts ON igris_audit_events (connection, ts);
    """,
    # 2: a connection's TLS material (igris_mw.models.TlsConfig.to_text; the client key sealed)
    "ALTER TABLE igris_connections ADD COLUMN tls text;",
    # 3: access policy (rateLimit, tools, maxConcurrent) as one JSON text (NULL: none);
    # the count of an audit event that stands for several repeated refusals
    """
    ALTER TABLE igris_connections ADD COLUMN policy text;
    ALTER TABLE igris_api_keys ADD COLUMN policy text;
    ALTER TABLE igris_audit_events ADD COLUMN count integer;
    """,
    # 4 (issue 10): keyed chains. Events name their audit key and may carry
    # changes; heads are MACed; the anchor over all heads is the '#anchor'
    # row (seq: how many chains, hash: the XOR digest). The global chain is
    # connection ''. Existing unkeyed trails are re-sealed by use_audit_key
    # ('#reseal' marks them).
    """
    ALTER TABLE igris_audit_events ADD COLUMN key_id text, ADD COLUMN changes text;
    ALTER TABLE igris_audit_heads ADD COLUMN key_id text, ADD COLUMN mac text;
    INSERT INTO igris_audit_heads (connection, seq, hash)
        SELECT '#reseal', 0, NULL WHERE EXISTS (SELECT 1 FROM igris_audit_events);
    """,
    # 5: the oauth object of OAuth connections (JSON text, never a secret),
    # the credential scope, the user an API key is bound to, and OAuth or
    # per-user credentials: sealed per (connection, user; '' for the
    # connection's own), written by compare-and-set on version
    """
    ALTER TABLE igris_connections ADD COLUMN oauth text;
    ALTER TABLE igris_connections ADD COLUMN credential_scope text NOT NULL DEFAULT 'shared';
    ALTER TABLE igris_api_keys ADD COLUMN "user" text;
    CREATE TABLE igris_oauth_grants (
        slug text COLLATE "C" NOT NULL,
        "user" text COLLATE "C" NOT NULL,
        ciphertext bytea,
        expires_at timestamptz,
        lifetime double precision,
        status text NOT NULL,
        lease_until timestamptz,
        version bigint NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (slug, "user")
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: AsyncConnection[Any]) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; returns the version found.

    Runs in one transaction under a transaction-scoped advisory lock, so
    processes starting at once migrate one after another and the later ones
    find the work done.

    Raises:
        ConfigurationError: the database is at a newer version than this code knows.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS igris_schema_version (version integer NOT NULL)"
        )
        cur = await conn.execute("SELECT max(version) FROM igris_schema_version")
        row = await cur.fetchone()
        found = int(row[0]) if row is not None and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the postgres database is at igris schema version {found}, newer than "
                f"version {SCHEMA_VERSION} that this igris-mw-postgres knows; "
                "upgrade igris-mw-postgres"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1].encode())
        if found < SCHEMA_VERSION:
            await conn.execute("DELETE FROM igris_schema_version")
            await conn.execute(
                "INSERT INTO igris_schema_version (version) VALUES (%s)", (SCHEMA_VERSION,)
            )
    return found
