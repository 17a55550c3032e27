"""Hostile requests: every sink stores their events and the chains verify
(SQLite, the memory store, the JSON-lines sink); the NUL request blocks nothing."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from igris_mw import IgrisGateway
from igris_mw.testing import FixedKeyring, MemoryStore
from igris_mw.testing.audit_hostile import (
    HostileRequest,
    assert_all_stored,
    hostile_requests,
    nul_then_normal,
    send_hostile,
    upstream,
)

_SINKS = ["sqlite", "memory", "jsonl"]


def _gateway(kind: str, tmp: Path) -> IgrisGateway:
    store: Any
    audit: str | None = None
    if kind == "sqlite":
        store = f"sqlite:///{tmp / 'igris.db'}"
    else:
        store = MemoryStore()
        if kind == "jsonl":
            audit = f"jsonl://{tmp / 'audit.jsonl'}"
    return IgrisGateway(
        None,
        store=store,
        crypto=FixedKeyring("hostile"),
        audit=audit,
        environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
    )


async def _setup(gw: IgrisGateway, url: str) -> str:
    _, key = await gw.service.create_api_key({"name": "a", "scopes": ["admin"]})
    await gw.service.create_connection(
        {"slug": "conn-a", "name": "A", "upstreamUrl": url, "credential": "tok"}
    )
    return key


async def _hostile(kind: str, requests: list[HostileRequest]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with upstream() as url:
            gw = _gateway(kind, Path(tmp))
            async with gw:
                key = await _setup(gw, url)
                for request in requests:
                    status = await send_hostile(gw, "conn-a", key, request)
                    assert status in (200, 400, 401, 404, 502), (status, request)
                await assert_all_stored(gw)


@settings(max_examples=25)
@given(st.sampled_from(_SINKS), st.lists(hostile_requests(), min_size=1, max_size=6))
def test_hostile_requests_are_stored_by_every_core_sink(
    kind: str, requests: list[HostileRequest]
) -> None:
    """Any bytes in path, query, user, metadata, method and tool: stored, chain verifies."""
    asyncio.run(_hostile(kind, requests))


async def test_a_nul_request_blocks_nothing_on_any_core_sink(tmp_path: Path) -> None:
    """GET /v1/mcp/<slug>/%00 with no key, then 200 requests: all stored within 2 s."""
    for kind in _SINKS:
        async with upstream() as url:
            gw = _gateway(kind, tmp_path / kind)
            async with gw:
                key = await _setup(gw, url)
                elapsed = await nul_then_normal(gw, "conn-a", key)
                await assert_all_stored(gw)
                page = await gw.service.list_audit("conn-a", limit=200)
                paths = [e.path for e in page.items if e.kind == "gateway"]
                assert "/v1/mcp/conn-a/\\x00" in [
                    *paths,
                    *(e.path for e in await gw.service.audit.audit_chain("conn-a")),
                ]
        assert elapsed < 2.0, (kind, elapsed)
