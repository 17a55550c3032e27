"""Schema migrations: version table, newer versions refused, concurrent starts."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from igris_mw_postgres import SCHEMA_VERSION, PostgresStore

from igris_mw.errors import ConfigurationError
from igris_mw.testing.storage_suite import make_connection


def _versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM igris_schema_version")]


async def test_open_records_the_current_version_and_keeps_data(pg_dsn: str) -> None:
    """Opening records SCHEMA_VERSION once; reopening migrates nothing and keeps the data."""
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.create_connection(make_connection("survives"))
    await store.close()
    again = PostgresStore(pg_dsn)
    await again.open()
    try:
        assert (await again.get_connection("survives")).slug == "survives"
    finally:
        await again.close()
    assert _versions(pg_dsn) == [SCHEMA_VERSION]


async def test_newer_schema_version_is_refused(pg_dsn: str) -> None:
    """A database at a newer schema version raises ConfigurationError naming both versions."""
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("UPDATE igris_schema_version SET version = %s", (SCHEMA_VERSION + 5,))
    newer = PostgresStore(pg_dsn)
    with pytest.raises(ConfigurationError) as info:
        await newer.open()
    message = str(info.value)
    assert f"version {SCHEMA_VERSION + 5}" in message
    assert f"version {SCHEMA_VERSION} " in message
    assert "\n" not in message
    await newer.close()


async def test_concurrent_first_opens_migrate_once(pg_dsn: str) -> None:
    """Several processes opening an empty database at once all succeed, and it is migrated once."""
    stores = [PostgresStore(pg_dsn) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].create_connection(make_connection("one-schema"))
        assert (await stores[3].get_connection("one-schema")).slug == "one-schema"
    finally:
        for s in stores:
            await s.close()
    assert _versions(pg_dsn) == [SCHEMA_VERSION]
