"""SQLiteStore: the conformance suite, plus file mode, WAL, no plaintext on disk, a free loop."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from igris_mw import ConfigurationError, StoreUnavailable
from igris_mw._errors import AuditRejected
from igris_mw._plugins import store_from_url
from igris_mw._sqlite import SCHEMA_VERSION, SQLiteStore
from igris_mw.storage import Store, verify_chain
from igris_mw.testing.storage_suite import (
    StoreSuite,
    make_connection,
    make_event,
    make_state_machine,
)


class TestSQLiteStore(StoreSuite):
    async def make_store(self) -> Store:
        store = SQLiteStore.from_url(f"sqlite:///{self.tmp_path}/igris.db")
        await store.open()
        return store

    async def make_peer(self, store: Store) -> Store:
        assert isinstance(store, SQLiteStore)
        peer = SQLiteStore(store.path)
        await peer.open()
        return peer


async def _fresh_sqlite() -> SQLiteStore:
    store = SQLiteStore(":memory:")
    await store.open()
    return store


TestSQLiteStoreModel = make_state_machine(_fresh_sqlite, max_examples=60)


async def _opened(path: Path | str, **kwargs: float) -> SQLiteStore:
    store = SQLiteStore(path, **kwargs)
    await store.open()
    return store


def test_from_url_reads_paths_as_sqlalchemy_does() -> None:
    """sqlite:///rel.db is relative, sqlite:////abs.db absolute, sqlite:///:memory: in memory."""
    assert SQLiteStore.from_url("sqlite:///rel/igris.db").path == "rel/igris.db"
    assert SQLiteStore.from_url("sqlite:////abs/igris.db").path == "/abs/igris.db"
    assert SQLiteStore.from_url("sqlite:///:memory:").path == ":memory:"
    assert isinstance(store_from_url("sqlite:///x.db"), SQLiteStore)


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///x.db?mode=ro", "pg:///x"]
)
def test_from_url_refuses_malformed_urls(url: str) -> None:
    """A URL that names no SQLite file raises ConfigurationError."""
    with pytest.raises(ConfigurationError):
        SQLiteStore.from_url(url)


async def test_file_created_private(tmp_path: Path) -> None:
    """The database file and its WAL files are mode 0600, a created parent directory 0700."""
    path = tmp_path / "new" / "dir" / "igris.db"
    store = await _opened(path)
    try:
        await store.create_connection(make_connection("private"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            assert side.exists()
            assert stat.S_IMODE(side.stat().st_mode) == 0o600
    finally:
        await store.close()


async def test_wal_mode_is_on(tmp_path: Path) -> None:
    """The database file is in WAL journal mode, so readers do not block the writer."""
    path = tmp_path / "igris.db"
    store = await _opened(path)
    await store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


async def test_plaintext_never_reaches_the_file(tmp_path: Path) -> None:
    """Only the ciphertext given is written: the plaintext credential is nowhere in the files."""
    from igris_mw.crypto import binding
    from igris_mw.testing import FixedKeyring

    canary = b"CANARY-sk-live-0123456789abcdef"
    keyring = FixedKeyring("test")
    conn = make_connection("canary")
    envelope = await keyring.encrypt(
        canary, binding(conn.slug, conn.credential_version, conn.upstream_url, conn.auth_type)
    )
    path = tmp_path / "igris.db"
    store = await _opened(path)
    try:
        await store.create_connection(make_connection("canary", ciphertext=envelope))
        assert (await store.get_connection("canary")).ciphertext == envelope
    finally:
        await store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert envelope in on_disk
    assert canary not in on_disk


async def test_event_loop_not_blocked(tmp_path: Path) -> None:
    """A large audit append runs off the event loop: a concurrent ticker keeps ticking."""
    store = await _opened(tmp_path / "igris.db")
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0.001)

    try:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        before = ticks
        await store.append_audit_events([make_event("bulk", i) for i in range(5000)])
        during = ticks - before
        running = False
        await task
        assert during >= 5
        chain = await store.audit_chain("bulk", limit=10_000)
        assert len(chain) == 5000
        assert verify_chain(chain) == []
    finally:
        await store.close()


async def test_newer_schema_refused(tmp_path: Path) -> None:
    """A database whose schema is newer than the code raises ConfigurationError on open."""
    path = tmp_path / "igris.db"
    await (await _opened(path)).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    db.close()
    store = SQLiteStore(path)
    with pytest.raises(ConfigurationError, match="newer"):
        await store.open()
    with pytest.raises(StoreUnavailable):
        await store.get_connection("anything")
    await store.close()


async def test_reopen_keeps_data_and_migrates_once(tmp_path: Path) -> None:
    """Reopening a database keeps its data and records each schema version once."""
    path = tmp_path / "igris.db"
    store = await _opened(path)
    created = await store.create_connection(make_connection("durable"))
    await store.append_audit_events([make_event("durable", 0)])
    await store.close()
    for _ in range(2):
        store = await _opened(path)
        assert await store.get_connection("durable") == created
        assert len(await store.audit_chain("durable")) == 1
        await store.close()
    db = sqlite3.connect(path)
    try:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_version")]
    finally:
        db.close()
    assert versions == list(range(1, SCHEMA_VERSION + 1))


async def test_locked_database_is_unavailable(tmp_path: Path) -> None:
    """A write lock held too long by another process raises StoreUnavailable, saying why."""
    path = tmp_path / "igris.db"
    store = await _opened(path, busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create_connection(make_connection("blocked"))
        other.execute("ROLLBACK")
        await store.create_connection(make_connection("blocked"))
    finally:
        other.close()
        await store.close()


async def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    """A path that cannot be created or is not a database raises StoreUnavailable on open."""
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StoreUnavailable):
        await SQLiteStore(blocker / "igris.db").open()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a SQLite database, just some bytes" * 100)
    with pytest.raises(StoreUnavailable):
        await SQLiteStore(junk).open()


async def test_not_open_is_unavailable(tmp_path: Path) -> None:
    """Using a store before open or after close raises StoreUnavailable."""
    store = SQLiteStore(tmp_path / "igris.db")
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.list_connections()
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.list_api_keys()


async def test_memory_database_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///:memory: opens a private in-memory store that creates no file."""
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore.from_url("sqlite:///:memory:")
    await store.open()
    try:
        await store.create_connection(make_connection("in-ram"))
        assert (await store.get_connection("in-ram")).slug == "in-ram"
    finally:
        await store.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damaged", ["{not json", "[1]", '{"x": 1}'])
async def test_damaged_last_event_refuses_the_next_append(tmp_path: Path, damaged: str) -> None:
    """A chain whose last stored row is not a sealed event refuses new events
    (AuditRejected), instead of chaining onto it or reporting an outage."""
    path = tmp_path / "igris.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.append_audit_events([make_event("c", ms=1)])
        with sqlite3.connect(path) as db:
            db.execute("UPDATE audit_events SET body = ?", (damaged,))
        with pytest.raises(AuditRejected):
            await store.append_audit_events([make_event("c", ms=2)])
        await store.append_audit_events([make_event("other", ms=3)])  # other chains go on
    finally:
        await store.close()
