"""Tests for igris_mw._openwork (the open-work registry) and the resolver's rechecks that
drive it, without ASGI: tasks stand in for open requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import attrs
import pytest

from igris_mw._openwork import OpenWork, Ticket
from igris_mw._resolver import Resolver
from igris_mw._service import Service
from igris_mw.models import utcnow
from igris_mw.storage import Change
from igris_mw.testing import FixedKeyring, MemoryStore

T = utcnow()


async def _open_task(
    work: OpenWork, key: str, slug: str, **kw: object
) -> tuple[asyncio.Task[None], list[Ticket]]:
    """A task that holds a ticket until cancelled (a stand-in for an open stream)."""
    box: list[Ticket] = []
    ready = asyncio.Event()

    async def hold() -> None:
        ticket = work.open(key, slug, kw.get("created", T), kw.get("expires"))  # type: ignore[arg-type]
        box.append(ticket)
        ready.set()
        try:
            await asyncio.sleep(3600)
        finally:
            work.close(ticket)

    task = asyncio.ensure_future(hold())
    await ready.wait()
    return task, box


async def _ended(task: asyncio.Task[None], within: float = 1.0) -> bool:
    try:
        await asyncio.wait_for(asyncio.shield(task), within)
    except asyncio.CancelledError:
        return True
    except TimeoutError:
        return False
    return task.done()


async def test_registry_counts_and_forgets() -> None:
    """open/close keep per-key and per-slug sets, and leave nothing behind."""
    work = OpenWork()
    a, _ = await _open_task(work, "k1", "s1")
    b, _ = await _open_task(work, "k1", "s2")
    assert work.count_for_key("k1") == 2
    assert work.slugs() == {"s1", "s2"}
    assert work.has_key("k1")
    assert work.has_slug("s2")
    a.cancel()
    b.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    assert work.count_for_key("k1") == 0
    assert not work.has_key("k1")
    assert not work.slugs()
    assert len(work) == 0
    assert not work


async def test_end_key_only_on_given_slugs() -> None:
    """end_key with slugs ends only those; the key's other work stays."""
    work = OpenWork()
    a, ta = await _open_task(work, "k1", "s1")
    b, _ = await _open_task(work, "k1", "s2")
    assert work.end_key("k1", ["s1"]) == 1
    assert await _ended(a)
    assert ta[0].revoked
    assert not await _ended(b, 0.05)
    b.cancel()


async def test_end_connection_keeps_the_same_connection() -> None:
    """end_connection with keep_created spares the tickets of that very connection."""
    work = OpenWork()
    old_created = T - timedelta(days=1)
    old, _ = await _open_task(work, "k1", "s1", created=old_created)
    new, _ = await _open_task(work, "k2", "s1", created=T)
    assert work.end_connection("s1", keep_created=T) == 1
    assert await _ended(old)
    assert not await _ended(new, 0.05)
    new.cancel()


async def test_expiry_ends_the_keys_work_on_time() -> None:
    """A key's work ends when its expires_at passes; a later expiry re-arms the timer."""
    work = OpenWork()
    task, _ = await _open_task(work, "k1", "s1", expires=utcnow() + timedelta(seconds=0.2))
    work.set_expiry("k1", utcnow() + timedelta(seconds=0.5))
    assert not await _ended(task, 0.3)
    assert await _ended(task, 0.6)
    assert not work._expiry


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Resolver, Service]]:
    store = MemoryStore()
    service = Service(store, FixedKeyring("openwork"))
    resolver = Resolver(store, service, ttl=60)
    await store.open()
    resolver.attach()
    yield resolver, service
    await resolver.aclose()


async def _with_key(resolver: Resolver, service: Service, **body: object) -> tuple[str, str]:
    record, key = await service.create_api_key({"name": "k", "scopes": ["mcp"], **body})
    await resolver.authenticate(key)  # known to the resolver, as on the gateway path
    return record.id, key


async def _conn(service: Service, slug: str) -> None:
    await service.create_connection(
        {"slug": slug, "name": slug, "upstreamUrl": "https://up.example/mcp", "credential": "c"}
    )


async def test_delete_and_recreate_ends_the_old_connections_work(
    setup: tuple[Resolver, Service],
) -> None:
    """Recreated under the same slug: the old connection's work ends, new work stays."""
    resolver, service = setup
    await _conn(service, "same-slug")
    old = (await service.get_connection("same-slug")).created_at
    key_id, _ = await _with_key(resolver, service)
    task, _ = await _open_task(resolver.open_work, key_id, "same-slug", created=old)
    await service.delete_connection("same-slug")
    assert await _ended(task)
    await _conn(service, "same-slug")
    new = (await service.get_connection("same-slug")).created_at
    kept, _ = await _open_task(resolver.open_work, key_id, "same-slug", created=new)
    await service.update_connection("same-slug", {"name": "renamed"})
    assert not await _ended(kept, 0.1)  # other changes leave open work running
    kept.cancel()


async def test_key_patch_ends_only_the_connections_it_lost(
    setup: tuple[Resolver, Service],
) -> None:
    """A PATCH that narrows a key's connections ends its work there, not elsewhere."""
    resolver, service = setup
    for slug in ("keep-me", "lose-me"):
        await _conn(service, slug)
    key_id, _ = await _with_key(resolver, service, connections=["keep-me", "lose-me"])
    lost, _ = await _open_task(resolver.open_work, key_id, "lose-me")
    kept, _ = await _open_task(resolver.open_work, key_id, "keep-me")
    await service.update_api_key(key_id, {"connections": ["keep-me"]})
    assert await _ended(lost)
    assert not await _ended(kept, 0.1)
    await service.update_api_key(key_id, {"rateLimit": {"requestsPerMinute": 5}})
    assert not await _ended(kept, 0.1)
    await service.revoke_api_key(key_id)
    assert await _ended(kept)


async def test_a_notice_of_anything_rechecks_all_open_work(
    setup: tuple[Resolver, Service],
) -> None:
    """Change("all") (a notification channel that reconnected) rechecks every open ticket."""
    resolver, service = setup
    await _conn(service, "quiet")
    key_id, _ = await _with_key(resolver, service)
    task, _ = await _open_task(resolver.open_work, key_id, "quiet")
    # A write the resolver does not hear of, then the "anything changed" notice.
    conn = await service.store.get_connection("quiet")
    listeners = service.store._listeners  # type: ignore[attr-defined]
    service.store._listeners = []  # type: ignore[attr-defined]
    await service.store.update_connection(
        attrs.evolve(conn, enabled=False), expected_version=conn.version
    )
    service.store._listeners = listeners  # type: ignore[attr-defined]
    assert not await _ended(task, 0.1)
    resolver.on_change(Change("all"))
    assert await _ended(task)
