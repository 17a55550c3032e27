"""Hostile requests against the real Postgres server: every event stored
(NUL bytes, lone surrogates, controls), the chains verify, nothing blocks."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from igris_mw import IgrisGateway
from igris_mw.errors import NotFound
from igris_mw.testing import FixedKeyring
from igris_mw.testing.audit_hostile import (
    HostileRequest,
    assert_all_stored,
    hostile_requests,
    nul_then_normal,
    send_hostile,
    upstream,
)


async def _setup(gw: IgrisGateway, url: str) -> str:
    _, key = await gw.service.create_api_key({"name": "a", "scopes": ["admin"]})
    slug = "conn-a"
    try:
        await gw.service.update_connection(slug, {"upstreamUrl": url})
    except NotFound:  # the first example on this database
        await gw.service.create_connection(
            {"slug": slug, "name": "A", "upstreamUrl": url, "credential": "tok"}
        )
    return key


async def _hostile(dsn: str, requests: list[HostileRequest]) -> None:
    async with upstream() as url:
        gw = IgrisGateway(
            None,
            store=dsn,
            crypto=FixedKeyring("hostile"),
            environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
        )
        async with gw:
            key = await _setup(gw, url)
            for request in requests:
                status = await send_hostile(gw, "conn-a", key, request)
                assert status in (200, 400, 401, 404, 502), (status, request)
            await assert_all_stored(gw)


@settings(max_examples=20, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile_requests(), min_size=1, max_size=8))
def test_hostile_requests_are_stored_by_postgres(
    pg_dsn: str, requests: list[HostileRequest]
) -> None:
    """Any bytes in path, query, user, metadata, method and tool: stored, chain verifies."""
    asyncio.run(_hostile(pg_dsn, requests))


async def test_a_nul_request_does_not_block_the_postgres_audit(pg_dsn: str) -> None:
    """GET /v1/mcp/<slug>/%00 with no key, then 200 requests: all stored within 2 s, verified."""
    async with upstream() as url:
        gw = IgrisGateway(
            None,
            store=pg_dsn,
            crypto=FixedKeyring("hostile"),
            environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
        )
        async with gw:
            key = await _setup(gw, url)
            elapsed = await nul_then_normal(gw, "conn-a", key)
            await assert_all_stored(gw)
            chain = [e for e in await gw.service.audit.audit_chain("conn-a") if e.kind == "gateway"]
            assert chain[0].path == "/v1/mcp/conn-a/\\x00"
            assert chain[0].outcome == "denied"
            assert len(chain) == 201
    assert elapsed < 2.0, elapsed


async def test_postgres_tells_a_refused_value_from_an_outage(pg_dsn: str) -> None:
    """A NUL or a lone surrogate in an event is AuditRejected (data), not StoreUnavailable."""
    from igris_mw_postgres import PostgresStore

    from igris_mw.errors import AuditRejected, StoreUnavailable
    from igris_mw.testing.storage_suite import make_event

    store = PostgresStore(pg_dsn)
    await store.open()
    try:
        for bad in ({"path": "/a\x00b"}, {"user": "\ud800"}):
            with pytest.raises(AuditRejected) as info:
                await store.append_audit_events([make_event("refused", 0, **bad)])
            assert not isinstance(info.value, StoreUnavailable)
        await store.append_audit_events([make_event("refused", 1)])
        assert len(await store.audit_chain("refused")) == 1
    finally:
        await store.close()
