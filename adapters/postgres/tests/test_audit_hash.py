"""The Postgres store hashes audit events exactly as every other sink does."""

from __future__ import annotations

from datetime import UTC, datetime

from igris_mw_postgres import PostgresStore

from igris_mw.models import AuditEvent
from igris_mw.storage import seal_event, verify_chain
from igris_mw.testing import MemoryStore


def _events() -> list[AuditEvent]:
    return [
        AuditEvent(
            id=f"evt_same_{i}",
            timestamp=datetime(2026, 1, 2, 3, 4, 5, 678000 + i * 1000, tzinfo=UTC),
            connection="same",
            user="ada\u00e9\u2603",
            metadata={"b": [1, 2.5, None], "a": "\u00fc\U0001f600", "n": i},
            method="POST",
            path="/mcp/\u00e9",
            rpc_method="tools/call",
            tool="search",
            status=200,
            latency_ms=1.25,
            bytes_in=10,
            bytes_out=20,
            credential_version=3,
        )
        for i in range(3)
    ]


async def test_postgres_and_memory_stores_store_the_same_hashes(pg_store: PostgresStore) -> None:
    """One batch in Postgres and in the memory store: equal hashes, both chains verify."""
    expected: list[AuditEvent] = []
    for event in _events():
        expected.append(seal_event(event, expected[-1] if expected else None))
    memory = MemoryStore()
    await memory.open()
    await pg_store.append_audit_events(_events())
    await memory.append_audit_events(_events())
    in_postgres = await pg_store.audit_chain("same")
    in_memory = await memory.audit_chain("same")
    assert [e.hash for e in in_postgres] == [e.hash for e in expected]
    assert [e.hash for e in in_memory] == [e.hash for e in expected]
    assert verify_chain(in_postgres) == []
    assert verify_chain(in_memory) == []
