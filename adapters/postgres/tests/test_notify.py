"""Change notifications across store objects over LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from igris_mw_postgres import PostgresStore
from igris_mw_postgres._notify import parse_payload, payload
from igris_mw_postgres._store import LISTENER_NAME

from igris_mw.storage import Change
from igris_mw.testing.storage_suite import make_api_key, make_connection


async def _next(queue: asyncio.Queue[Change], timeout: float) -> Change:
    return await asyncio.wait_for(queue.get(), timeout=timeout)


def test_payload_round_trips_and_junk_is_ignored() -> None:
    """A payload parses back to its origin and change; foreign payloads are ignored."""
    assert parse_payload(payload("o1", "connection", "abc")) == ("o1", Change("connection", "abc"))
    assert parse_payload(payload("o1", "all", None)) == ("o1", Change("all"))
    for junk in ("", "hello", "o1|table:x", "connection:abc"):
        assert parse_payload(junk) is None


async def test_write_reaches_another_store_object_quickly(pg_dsn: str) -> None:
    """A commit through one store object reaches another's listeners within 500 ms."""
    writer, reader = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    await writer.open()
    await reader.open()
    try:
        heard: asyncio.Queue[Change] = asyncio.Queue()
        reader.add_listener(heard.put_nowait)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await writer.create_connection(make_connection("spread"))
        assert await _next(heard, 5) == Change("connection", "spread")
        assert loop.time() - started < 0.5
        await writer.create_api_key(make_api_key("k-spread"))
        assert await _next(heard, 5) == Change("api_key", "k-spread")
    finally:
        await writer.close()
        await reader.close()


async def test_own_writes_are_heard_once_and_failed_writes_not_at_all(pg_dsn: str) -> None:
    """A store does not hear its own NOTIFY echo, and a failed write notifies no process."""
    store, peer = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    await store.open()
    await peer.open()
    try:
        heard: asyncio.Queue[Change] = asyncio.Queue()
        store.add_listener(heard.put_nowait)
        await store.create_connection(make_connection("mine"))
        assert heard.get_nowait() == Change("connection", "mine")
        with pytest.raises(Exception, match="taken"):
            await peer.create_connection(make_connection("mine"))
        # a fence: once the peer's next write arrives, anything earlier has too
        await peer.create_connection(make_connection("fence"))
        assert await _next(heard, 5) == Change("connection", "fence")
        assert heard.empty()
    finally:
        await store.close()
        await peer.close()


async def test_listener_reconnects_and_flushes_everything(pg_dsn: str) -> None:
    """A store whose listening connection is killed reconnects, emits Change('all'), hears again."""
    store, peer = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    await store.open()
    await peer.open()
    try:
        heard: asyncio.Queue[Change] = asyncio.Queue()
        store.add_listener(heard.put_nowait)
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
            cur = await admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                (LISTENER_NAME,),
            )
            row = await cur.fetchone()
            assert row is not None
            assert row[0] == 2  # both store objects' listeners
        assert await _next(heard, 5) == Change("all")
        await peer.create_connection(make_connection("after"))
        change = await _next(heard, 5)
        assert change == Change("connection", "after")
    finally:
        await store.close()
        await peer.close()
