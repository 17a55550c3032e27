"""The storage conformance suite and the model-based state machine, on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from igris_mw_postgres import PostgresStore
from igris_mw_postgres.testing import TempCluster, create_database, drop_database

from igris_mw.errors import ConfigurationError, StoreUnavailable
from igris_mw.plugins import store_from_url
from igris_mw.storage import Change, Store, verify_chain
from igris_mw.testing.storage_suite import (
    StoreSuite,
    make_connection,
    make_event,
    make_state_machine,
)

_admin: list[str] = []
_made: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _admin_dsn(pg_admin_dsn: str) -> Iterator[None]:
    """Hands the server to the state machine, which pytest fixtures cannot reach."""
    _admin.append(pg_admin_dsn)
    yield
    # Dropped only on a server the run was given: the session's own cluster is
    # deleted whole at the end, and these ~80 DROP DATABASEs took 20-45 s on a
    # loaded 2-core machine.
    if os.environ.get("IGRIS_TEST_POSTGRES_DSN"):
        for dsn in _made:
            drop_database(pg_admin_dsn, dsn)
    _made.clear()
    _admin.clear()


async def _fresh_store() -> PostgresStore:
    dsn = create_database(_admin[0])
    _made.append(dsn)
    store = PostgresStore(dsn)
    await store.open()
    return store


class TestPostgresStore(StoreSuite):
    async def make_store(self) -> Store:
        self.dsn = create_database(_admin[0])
        _made.append(self.dsn)
        store = PostgresStore(self.dsn)
        await store.open()
        return store

    async def make_peer(self, store: Store) -> Store:
        peer = PostgresStore(self.dsn)
        await peer.open()
        return peer


TestPostgresStoreModel = make_state_machine(_fresh_store, max_examples=15)


# -- Postgres specifics -------------------------------------------------------

PASSWORD = "s3cret-Pa55"


async def test_metadata_survives_exactly(pg_store: PostgresStore) -> None:
    """Metadata that jsonb would rewrite (1e100, -0.0, big ints, NUL) comes back identical."""
    metadata = {"big": 1e100, "neg0": -0.0, "huge": 2**70, "nul": "a\u0000b", "f": 0.1, "i": 3}
    event = make_event("meta", metadata=metadata)
    await pg_store.append_audit_events([event])
    [stored] = await pg_store.audit_chain("meta")
    assert stored.metadata == metadata
    assert json.dumps(stored.to_json()["metadata"]) == json.dumps(event.to_json()["metadata"])
    assert verify_chain([stored]) == []


async def test_multi_connection_batches_race_without_deadlock(pg_dsn: str) -> None:
    """Batches spanning the same connections in opposite orders, through two objects, all land."""
    a, b = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    await a.open()
    await b.open()
    try:
        slugs = ["ccc", "aaa", "bbb"]
        batches = [
            [make_event(s, i) for s in (slugs if i % 2 else list(reversed(slugs)))]
            for i in range(12)
        ]
        await asyncio.wait_for(
            asyncio.gather(
                *((a if i % 2 else b).append_audit_events(x) for i, x in enumerate(batches))
            ),
            timeout=30,
        )
        for slug in slugs:
            chain = await a.audit_chain(slug)
            assert [e.seq for e in chain] == list(range(1, 13))
            assert verify_chain(chain) == []
    finally:
        await a.close()
        await b.close()


def test_repr_and_malformed_urls_mask_the_password() -> None:
    """repr masks the password, and a malformed URL is a one-line ConfigurationError without it."""
    assert PASSWORD not in repr(PostgresStore(f"postgresql://u:{PASSWORD}@h/db"))
    for url in (
        f"postgresql://u:{PASSWORD}@host:notaport/db",
        f"postgresql://u:{PASSWORD}@[::1/db",
        f"postgres://u:{PASSWORD}@h/db?no_such_option=1",
    ):
        with pytest.raises(ConfigurationError) as info:
            store_from_url(url)
        assert PASSWORD not in str(info.value)
        assert "\n" not in str(info.value)
        assert "malformed postgres store URL" in str(info.value)


async def test_wrong_password_is_named_and_masked(pg_dsn: str) -> None:
    """A wrong password gives StoreUnavailable saying authentication failed, the password masked."""
    url = urlsplit(pg_dsn)
    bad = urlunsplit(url._replace(netloc=f"{url.username}:{PASSWORD}@{url.hostname}:{url.port}"))
    store = PostgresStore(bad)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    message = str(info.value)
    assert "password authentication failed" in message
    assert PASSWORD not in message
    assert ":***@" in message
    assert "\n" not in message
    await store.close()


async def test_unreachable_server_fails_fast() -> None:
    """A server that is not there gives StoreUnavailable within seconds, naming the refusal."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = PostgresStore(f"postgresql://u:{PASSWORD}@127.0.0.1:{port}/db")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert time.monotonic() - started < 3
    assert "postgres unreachable" in str(info.value)
    assert "refused" in str(info.value).lower()
    assert PASSWORD not in str(info.value)


async def test_calls_on_a_closed_store_are_unavailable(pg_dsn: str) -> None:
    """A store that is not open raises StoreUnavailable, not an AttributeError."""
    store = PostgresStore(pg_dsn)
    with pytest.raises(StoreUnavailable):
        await store.get_connection("nope")


@pytest.mark.slow
async def test_restart_outage_is_fast_and_recovers(private_cluster: TempCluster) -> None:
    """While the server is down calls fail within 2.5 s; after restart the same store works."""
    dsn = create_database(private_cluster.dsn)
    store = PostgresStore(dsn)
    await store.open()
    heard: asyncio.Queue[Change] = asyncio.Queue()
    store.add_listener(heard.put_nowait)
    try:
        await store.create_connection(make_connection("steady"))
        heard.get_nowait()
        private_cluster.stop()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                await store.get_connection("steady")
            assert time.monotonic() - started < 2.5
            assert private_cluster.password not in str(info.value)
        with pytest.raises(StoreUnavailable):
            await store.append_audit_events([make_event("steady")])
        private_cluster.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert (await store.get_connection("steady")).slug == "steady"
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never recovered"
                await asyncio.sleep(0.1)
        await store.append_audit_events([make_event("steady")])
        assert [e.seq for e in await store.audit_chain("steady")] == [1]
        assert await asyncio.wait_for(heard.get(), timeout=5) == Change("all")
    finally:
        await store.close()
