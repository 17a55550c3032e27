"""The audit tamper suite on Postgres, and the migration that re-seals an unkeyed trail."""

from __future__ import annotations

import json

import psycopg
import pytest
from igris_mw_postgres import PostgresStore
from igris_mw_postgres._store import _event_from_row
from psycopg.rows import dict_row

from igris_mw.testing.audit_suite import AuditTamperSuite, Raw, Trail, service_for

_COLS = (
    'id, connection, seq, ts, kind, action, api_key_id, "user", metadata, method, path, '
    "rpc_method, tool, status, outcome, latency_ms, bytes_in, bytes_out, credential_version, "
    "prev_hash, hash, count, key_id, changes"
)


class PostgresTrail:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.store = PostgresStore(dsn)
        self.svc = service_for(self.store)

    def read(self, chain: str) -> Raw:
        with psycopg.connect(self.dsn) as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = cur.execute(
                f"SELECT {_COLS} FROM igris_audit_events WHERE connection = %s ORDER BY seq",
                (chain,),
            ).fetchall()
        return [_event_from_row(r).to_json() for r in rows]

    def write(self, chain: str, events: Raw) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM igris_audit_events WHERE connection = %s", (chain,))
            for e in events:
                conn.execute(
                    f"INSERT INTO igris_audit_events ({_COLS}) VALUES "
                    f"({', '.join(['%s'] * 24)})",
                    (
                        e["id"], chain, e["seq"], e["timestamp"], e["kind"], e["action"],
                        e["apiKeyId"], e["user"],
                        None if e["metadata"] is None else json.dumps(e["metadata"]),
                        e["method"], e["path"], e["rpcMethod"], e["tool"], e["status"],
                        e["outcome"], e["latencyMs"], e["bytesIn"], e["bytesOut"],
                        e["credentialVersion"], e["prevHash"], e["hash"], e.get("count"),
                        e.get("keyId"),
                        None if e.get("changes") is None else json.dumps(e["changes"]),
                    ),
                )  # fmt: skip

    def drop_head(self, chain: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM igris_audit_heads WHERE connection = %s", (chain,))

    def swap(self, chain: str, i: int, j: int) -> None:
        # Ordered by its seq column: a reorder is two rows trading seqs.
        a, b = self.read(chain)[i], self.read(chain)[j]
        with psycopg.connect(self.dsn, autocommit=True) as conn, conn.transaction():
            conn.execute("UPDATE igris_audit_events SET seq = -1 WHERE id = %s", (a["id"],))
            conn.execute(
                "UPDATE igris_audit_events SET seq = %s WHERE id = %s", (a["seq"], b["id"])
            )
            conn.execute(
                "UPDATE igris_audit_events SET seq = %s WHERE id = %s", (b["seq"], a["id"])
            )

    async def close(self) -> None:
        await self.store.close()


class TestPostgresTrail(AuditTamperSuite):
    @pytest.fixture(autouse=True)
    def _dsn(self, pg_dsn: str) -> None:
        self.dsn = pg_dsn

    async def make_trail(self) -> Trail:
        made = PostgresTrail(self.dsn)
        await made.store.open()
        return made


def test_unkeyed_trail_is_resealed_by_the_migration(pg_dsn: str) -> None:
    """A database from before keyed chains (schema 1) is re-sealed under the key on first use."""
    import asyncio
    from datetime import UTC, datetime

    from igris_mw_postgres._schema import MIGRATIONS

    from igris_mw.models import AuditEvent
    from igris_mw.storage import seal_event

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(MIGRATIONS[0].encode())
        conn.execute("CREATE TABLE igris_schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO igris_schema_version (version) VALUES (1)")
        previous = None
        for i in range(3):
            event = AuditEvent(
                id=f"evt_{i:028x}", timestamp=datetime(2026, 1, 1, tzinfo=UTC),
                connection="ghub", kind="management", action="update",
            )  # fmt: skip
            previous = seal_event(event, previous)
            conn.execute(
                "INSERT INTO igris_audit_events (id, connection, seq, ts, kind, action, outcome,"
                " bytes_in, bytes_out, prev_hash, hash) VALUES (%s, 'ghub', %s, %s,"
                " 'management', 'update', 'ok', 0, 0, %s, %s)",
                (previous.id, previous.seq, previous.timestamp, previous.prev_hash, previous.hash),
            )
        conn.execute("INSERT INTO igris_audit_heads (connection, seq, hash) VALUES ('ghub', 3, %s)",
                     (previous.hash,))  # fmt: skip

    async def check() -> None:
        store = PostgresStore(pg_dsn)
        await store.open()
        try:
            svc = service_for(store)
            assert await svc.verify_audit() == {"ghub": []}
            chain = await store.audit_chain("ghub")
            assert [e.id for e in chain] == [f"evt_{i:028x}" for i in range(3)]
            assert {e.key_id for e in chain} == {(await svc.use_audit_key()).key_id}  # type: ignore[union-attr]
        finally:
            await store.close()

    asyncio.run(check())
