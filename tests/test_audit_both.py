"""A management change and its audit event are stored both or neither."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from igris_mw._api import ManagementAPI
from igris_mw._audit.jsonl import JsonlAuditSink
from igris_mw._errors import ServiceUnavailable, SlugTaken, StoreUnavailable
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.models import AuditEvent
from igris_mw.storage import AuditKey, ChainAnchor, ChainHead
from igris_mw.testing import FixedKeyring, MemoryStore

BODY = {"slug": "ghub", "name": "GitHub", "upstreamUrl": "https://mcp.example/mcp",
        "credential": "canary-both-secret"}  # fmt: skip


class RefusingSink:
    """A separate audit sink that is down when ``down`` is set."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.down = False

    async def use_audit_key(self, key: AuditKey | None) -> None:
        await self.inner.use_audit_key(key)

    async def audit_heads(self) -> tuple[dict[str | None, ChainHead], ChainAnchor | None]:
        return await self.inner.audit_heads()

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        if self.down:
            raise StoreUnavailable("the audit sink is down")
        await self.inner.append_audit_events(events)

    async def list_audit_events(self, connection: str | None, **kw: Any) -> Any:
        return await self.inner.list_audit_events(connection, **kw)

    async def audit_chain(self, connection: str | None, **kw: Any) -> list[AuditEvent]:
        return await self.inner.audit_chain(connection, **kw)

    async def audit_connections(self) -> list[str]:
        return await self.inner.audit_connections()


class NoAuditStore(MemoryStore):
    """A store that keeps no audit (as a Vault KV store): the sink is separate."""

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        raise AssertionError("the store is not the audit sink")


async def test_separate_sink_refusing_fails_the_change_with_503_and_stores_nothing() -> None:
    """Sink down: every management call is 503 audit_unavailable and nothing changes."""
    store, sink = NoAuditStore(), RefusingSink()
    svc = Service(store, FixedKeyring(), audit=sink)
    await svc.create_connection(BODY)
    _, admin = await svc.create_api_key({"name": "admin", "scopes": ["admin"]})
    sink.down = True
    before = await store.get_connection("ghub")
    keys_before = await store.list_api_keys()
    with pytest.raises(ServiceUnavailable) as caught:
        await svc.set_enabled("ghub", False)
    assert caught.value.code == "audit_unavailable"
    with pytest.raises(ServiceUnavailable):
        await svc.create_connection({**BODY, "slug": "other"})
    with pytest.raises(ServiceUnavailable):
        await svc.delete_connection("ghub")
    with pytest.raises(ServiceUnavailable):
        await svc.create_api_key({"name": "x", "scopes": ["mcp"]})
    assert await store.get_connection("ghub") == before
    assert await store.list_api_keys() == keys_before
    assert [c.slug for c in (await store.list_connections()).items] == ["ghub"]

    api = ManagementAPI(svc)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as http:
        r = await http.post(
            "/api/v1/virtual-keys/ghub/disable", headers={"Authorization": f"Bearer {admin}"}
        )
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "audit_unavailable"
    assert "canary-both-secret" not in r.text
    assert (await store.get_connection("ghub")).enabled


async def test_separate_sink_change_that_fails_after_its_event_is_marked_aborted() -> None:
    """Event first: a change refused after its event was stored is followed by an aborted event."""
    store, sink = NoAuditStore(), RefusingSink()
    svc = Service(store, FixedKeyring(), audit=sink)
    await svc.create_connection(BODY)
    with pytest.raises(SlugTaken):
        await svc.create_connection(BODY)
    chain = await sink.audit_chain("ghub")
    assert [(e.action, e.outcome) for e in chain] == [
        ("create", "ok"), ("create", "ok"), ("create", "aborted"),
    ]  # fmt: skip
    assert chain[2].metadata == {"aborts": chain[1].id}
    assert (await svc.verify_audit())["ghub"] == []


class FailingAuditMemory(MemoryStore):
    """A store (its own sink) whose audit part fails inside the write."""

    fail = False

    def _append_now(self, events: Sequence[AuditEvent]) -> None:
        if self.fail and events:
            raise StoreUnavailable("the audit table cannot be written")
        super()._append_now(events)


async def test_same_store_audit_failure_rolls_the_change_back_memory() -> None:
    """Store = sink: when its audit append fails the change is not stored either."""
    store = FailingAuditMemory()
    svc = Service(store, FixedKeyring())
    await svc.create_connection(BODY)
    record, _ = await svc.create_api_key({"name": "ci", "scopes": ["mcp"]})
    store.fail = True
    with pytest.raises(StoreUnavailable):
        await svc.update_connection("ghub", {"name": "renamed"})
    with pytest.raises(StoreUnavailable):
        await svc.revoke_api_key(record.id)
    with pytest.raises(StoreUnavailable):
        await svc.delete_connection("ghub")
    with pytest.raises(StoreUnavailable):
        await svc.create_connection({**BODY, "slug": "other"})
    assert (await store.get_connection("ghub")).name == "GitHub"
    assert [k.revoked_at for k in await store.list_api_keys()] == [None]
    assert [c.slug for c in (await store.list_connections()).items] == ["ghub"]


async def test_same_store_audit_failure_rolls_the_change_back_sqlite(tmp_path: Path) -> None:
    """SQLite: an audit insert that fails inside the transaction rolls the change back."""
    path = tmp_path / "igris.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        svc = Service(store, FixedKeyring())
        await svc.create_connection(BODY)
        record, _ = await svc.create_api_key({"name": "ci", "scopes": ["mcp"]})
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("DROP TABLE audit_heads")  # every audit append now fails
        db.close()
        with pytest.raises(StoreUnavailable):
            await svc.update_connection("ghub", {"upstreamUrl": "https://evil.example/mcp"})
        with pytest.raises(StoreUnavailable):
            await svc.revoke_api_key(record.id)
        with pytest.raises(StoreUnavailable):
            await svc.delete_connection("ghub")
        assert (await store.get_connection("ghub")).upstream_url == "https://mcp.example/mcp"
        assert [k.revoked_at for k in await store.list_api_keys()] == [None]
    finally:
        await store.close()


async def test_jsonl_sink_unwritable_fails_the_change(tmp_path: Path) -> None:
    """A JSON-lines sink that cannot be written refuses the change: 503, nothing stored."""
    sink = JsonlAuditSink(tmp_path / "audit.jsonl")
    await sink.open()
    store = NoAuditStore()
    svc = Service(store, FixedKeyring(), audit=sink)
    await svc.create_connection(BODY)
    # A directory where the file was: no write succeeds, whoever the test runs as.
    (tmp_path / "audit.jsonl").unlink()
    (tmp_path / "audit.jsonl").mkdir()
    with pytest.raises(ServiceUnavailable) as caught:
        await svc.set_enabled("ghub", False)
    assert caught.value.code == "audit_unavailable"
    assert (await store.get_connection("ghub")).enabled
