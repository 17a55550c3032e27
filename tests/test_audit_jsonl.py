"""JsonlAuditSink: the audit trail in a JSON-lines file (the audit sink beside a Vault store)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import stat
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from igris_mw._audit.jsonl import JsonlAuditSink, audit_sink_from_url, event_from_json
from igris_mw._errors import ConfigurationError, StoreUnavailable
from igris_mw.models import AuditEvent, Page
from igris_mw.storage import (
    AuditKey,
    AuditQuery,
    Capabilities,
    ChainAnchor,
    ChainHead,
    Store,
    verify_chain,
)
from igris_mw.testing._memory import MemoryStore
from igris_mw.testing.storage_suite import StoreSuite, make_event


class _SinkBackedStore(MemoryStore):
    """A MemoryStore whose audit methods are a JsonlAuditSink's, so the shared
    suite's audit tests run against the sink."""

    capabilities = Capabilities(shared=False, notifies_remote=False, audit=True)

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.sink = JsonlAuditSink(path)

    async def open(self) -> None:
        await super().open()
        await self.sink.open()

    async def close(self) -> None:
        await self.sink.close()
        await super().close()

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        await self.sink.append_audit_events(events)

    async def use_audit_key(self, key: AuditKey | None) -> None:
        await self.sink.use_audit_key(key)

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        return await self.sink.audit_heads()

    async def list_all_audit_events(
        self, query: AuditQuery, *, limit: int = 50, cursor: str | None = None
    ) -> Page[AuditEvent]:
        return await self.sink.list_all_audit_events(query, limit=limit, cursor=cursor)

    async def list_audit_events(
        self,
        connection: str | None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        since: datetime | None = None,
    ) -> Page[AuditEvent]:
        return await self.sink.list_audit_events(
            connection, limit=limit, cursor=cursor, since=since
        )

    async def audit_chain(
        self, connection: str | None, *, after_seq: int = 0, limit: int = 1000
    ) -> list[AuditEvent]:
        return await self.sink.audit_chain(connection, after_seq=after_seq, limit=limit)

    async def audit_connections(self) -> list[str]:
        return await self.sink.audit_connections()


class TestJsonlSinkConformance(StoreSuite):
    """The storage suite's audit tests, with the audit part served by the JSON-lines sink."""

    async def make_store(self) -> Store:
        store = _SinkBackedStore(self.tmp_path / "audit.jsonl")
        await store.open()
        return store

    async def make_peer(self, store: Store) -> Store:
        # Another sink object on the same file: the two-writers test goes through flock.
        assert isinstance(store, _SinkBackedStore)
        peer = _SinkBackedStore(store.sink.path)
        await peer.open()
        return peer


async def _sink(path: Path) -> JsonlAuditSink:
    sink = JsonlAuditSink.from_url(f"jsonl://{path}")
    await sink.open()
    return sink


def test_from_url_forms(tmp_path: Path) -> None:
    """jsonl:///abs and jsonl:rel name a file; a host part or a missing file name is refused."""
    assert JsonlAuditSink.from_url(f"jsonl://{tmp_path}/a.jsonl").path == tmp_path / "a.jsonl"
    assert JsonlAuditSink.from_url("jsonl:rel/a.jsonl").path == Path("rel/a.jsonl")
    for bad in ("jsonl://host/a.jsonl", "jsonl:///dir/", "sqlite:///x.db"):
        with pytest.raises(ConfigurationError):
            JsonlAuditSink.from_url(bad)


async def test_file_is_private_and_reindexed_on_open(tmp_path: Path) -> None:
    """The file is created 0600, and a new sink object on it continues the same chains."""
    path = tmp_path / "sub" / "audit.jsonl"
    first = await _sink(path)
    await first.append_audit_events([make_event("alpha", i) for i in range(3)])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = await _sink(path)
    await second.append_audit_events([make_event("alpha", 9)])
    chain = await second.audit_chain("alpha")
    assert [e.seq for e in chain] == [1, 2, 3, 4]
    assert verify_chain(chain) == []
    # the first object sees the line the second appended
    assert len(await first.audit_chain("alpha")) == 4


async def test_lines_are_event_json(tmp_path: Path) -> None:
    """Each line is one sealed event's contract JSON and parses back to the same event."""
    path = tmp_path / "audit.jsonl"
    sink = await _sink(path)
    await sink.append_audit_events([make_event("lines", 0, metadata={"k": "ü"})])
    [line] = path.read_text(encoding="utf-8").splitlines()
    body = json.loads(line)
    assert body["seq"] == 1
    assert body["metadata"] == {"k": "ü"}
    assert event_from_json(body) == (await sink.audit_chain("lines"))[0]


async def test_torn_last_line_is_skipped_and_not_glued(tmp_path: Path) -> None:
    """A partial last line (crash mid-write) is skipped; later events start on a new line."""
    path = tmp_path / "audit.jsonl"
    sink = await _sink(path)
    await sink.append_audit_events([make_event("torn", 0)])
    with path.open("ab") as fh:
        fh.write(b'{"id": "half')
    reopened = await _sink(path)
    assert len(await reopened.audit_chain("torn")) == 1
    await reopened.append_audit_events([make_event("torn", 1)])
    again = await _sink(path)
    chain = await again.audit_chain("torn")
    assert [e.seq for e in chain] == [1, 2]
    assert again.skipped_lines == 1


async def test_unopened_sink_refuses(tmp_path: Path) -> None:
    """Using a sink before open() is a ConfigurationError, not a silent drop."""
    sink = JsonlAuditSink(tmp_path / "audit.jsonl")
    with pytest.raises(ConfigurationError, match="not open"):
        await sink.append_audit_events([make_event("x", 0)])


async def test_audit_sink_from_url(tmp_path: Path) -> None:
    """jsonl: URLs give an opened JsonlAuditSink; a store URL gives an opened store with audit."""
    sink: Any = await audit_sink_from_url(f"jsonl://{tmp_path}/a.jsonl")
    assert isinstance(sink, JsonlAuditSink)
    await sink.append_audit_events([make_event("via-url", 0)])
    assert await sink.audit_connections() == ["via-url"]
    store: Any = await audit_sink_from_url("memory://")
    assert store.capabilities.audit is True
    await store.close()


async def test_append_waits_for_a_foreign_lock_only_so_long(tmp_path: Path) -> None:
    """Another process holding the file's lock makes an append fail after lock_timeout, not hang."""
    path = tmp_path / "audit.jsonl"
    sink = JsonlAuditSink(path, lock_timeout=0.2)
    await sink.open()
    # A second open file description stands for another process: flock locks are per description.
    with path.open("ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            await sink.append_audit_events([make_event("locked", 1)])
        assert loop.time() - started < 2
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)
    await sink.append_audit_events([make_event("locked", 1)])
    assert len(await sink.audit_chain("locked")) == 1
