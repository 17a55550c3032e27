"""Tests for igris_mw._ops.readiness and the gateway's /readyz, in process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest

from igris_mw import IgrisGateway
from igris_mw.models import AuditEvent
from igris_mw.testing import FixedKeyring, MemoryStore

SECRET_DSN = "postgresql://igris:hunter2-canary@db.internal:5432/igris"


class FlakyStore(MemoryStore):
    """A MemoryStore whose key lookups can fail or hang, and that counts them."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.mode = "ok"

    async def get_api_key_by_hash(self, key_hash: bytes) -> Any:
        self.lookups += 1
        if self.mode == "down":
            raise ConnectionError(f"could not connect to {SECRET_DSN}")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return await super().get_api_key_by_hash(key_hash)


class BrokenSink:
    """An audit sink that refuses every batch."""

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        raise ConnectionError("audit sink down")


@pytest.fixture
async def gw() -> AsyncIterator[IgrisGateway]:
    gateway = IgrisGateway(None, store=FlakyStore(), crypto=FixedKeyring("ready"))
    await gateway.startup()
    yield gateway
    await gateway.aclose()


async def readyz(app: Any, path: str = "/readyz") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as c:
        return await c.get(path)


async def test_ready_when_store_answers_and_audit_keeps_up(gw: IgrisGateway) -> None:
    """A working store and an idle audit queue: 200 ready."""
    r = await readyz(gw)
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


async def test_store_down_is_503_with_a_reason_that_names_no_address(gw: IgrisGateway) -> None:
    """A failing store read: 503, reason 'store', no DSN or password in the body."""
    store = gw.store
    assert isinstance(store, FlakyStore)
    store.mode = "down"
    gw.readiness._store_ok = None  # no cached result
    r = await readyz(gw)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    body = r.json()
    assert body["status"] == "not_ready"
    assert [reason["check"] for reason in body["reasons"]] == ["store"]
    assert "hunter2" not in r.text
    assert "db.internal" not in r.text


async def test_a_hanging_store_is_not_ready_within_the_timeout(gw: IgrisGateway) -> None:
    """A store read that never returns counts as down after the timeout, not a hang."""
    store = gw.store
    assert isinstance(store, FlakyStore)
    store.mode = "hang"
    gw.readiness._store_ok = None
    gw.readiness._timeout = 0.2
    async with asyncio.timeout(5):
        r = await readyz(gw)
    assert r.status_code == 503


async def test_probes_share_one_cached_store_read(gw: IgrisGateway) -> None:
    """100 probes at once, then 100 more within the cache second: one store read."""
    store = gw.store
    assert isinstance(store, FlakyStore)
    gw.readiness._store_ok = None
    before = store.lookups
    transport = httpx.ASGITransport(app=gw)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as c:
        answers = await asyncio.gather(*(c.get("/readyz") for _ in range(100)))
        answers += [await c.get("/readyz") for _ in range(100)]
    assert {a.status_code for a in answers} == {200}
    assert store.lookups - before == 1


async def test_store_recovery_is_seen_after_the_cache_second(gw: IgrisGateway) -> None:
    """Once the cached result is older than cache_seconds, the store is asked again."""
    store = gw.store
    assert isinstance(store, FlakyStore)
    gw.readiness._cache_seconds = 0.05
    store.mode = "down"
    gw.readiness._store_ok = None
    assert (await readyz(gw)).status_code == 503
    store.mode = "ok"
    await asyncio.sleep(0.1)
    assert (await readyz(gw)).status_code == 200


async def test_audit_backlog_and_failing_sink_are_not_ready() -> None:
    """Audit events piling up behind a failing sink: 503 with audit reasons."""
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring("ready"), audit=BrokenSink())
    await gw.startup()
    try:
        gw.readiness._audit_threshold = 5
        gw.audit._retry_delay = 0.01
        for _ in range(6):
            gw._emit(
                {"id": f"evt_{_:028x}", "connection": "c-1", "method": "GET", "path": "/"},
                0.0,
                status=200,
                outcome="ok",
            )
        await asyncio.sleep(0.1)  # the writer tries and fails
        r = await readyz(gw)
        assert r.status_code == 503
        messages = [reason["message"] for reason in r.json()["reasons"]]
        assert all(reason["check"] == "audit" for reason in r.json()["reasons"])
        assert "6 audit events are waiting for the sink" in messages
        assert "the audit sink is failing" in messages
    finally:
        gw.audit._pending.clear()
        await gw.aclose()


async def test_a_fail_closed_audit_writer_is_not_ready(gw: IgrisGateway) -> None:
    """A writer that refuses requests (fail closed) makes the gateway not ready."""
    gw.audit.refusing = True  # type: ignore[attr-defined]
    r = await readyz(gw)
    assert r.status_code == 503
    assert "fail closed" in r.json()["reasons"][0]["message"]


async def test_middleware_answers_no_health_paths_unless_asked() -> None:
    """Wrapping an app, /readyz and /healthz go to the app unless paths are given."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    wrapped = IgrisGateway(app, store=MemoryStore(), crypto=FixedKeyring("ready"))
    assert (await readyz(wrapped)).status_code == 418
    asked = IgrisGateway(
        app,
        store=MemoryStore(),
        crypto=FixedKeyring("ready"),
        health_path="/live",
        ready_path="/ready",
    )
    assert (await readyz(asked, "/ready")).json() == {"status": "ready"}
    assert (await readyz(asked, "/live")).json() == {"status": "ok"}
    await asked.aclose()
