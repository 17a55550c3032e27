"""Hostile requests on a Vault store with its JSON-lines audit sink: every
event stored (lone surrogates, NUL, controls), the chains verify, nothing blocks."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from igris_mw_vault.testing import BaoDevServer

from igris_mw import IgrisGateway
from igris_mw.testing import FixedKeyring
from igris_mw.testing.audit_hostile import (
    HostileRequest,
    assert_all_stored,
    hostile_requests,
    nul_then_normal,
    send_hostile,
    upstream,
)


def _gateway(bao: BaoDevServer, audit: Path) -> IgrisGateway:
    store = f"vault://{bao.hostport}/secret/t{uuid.uuid4().hex[:12]}?tls=false"
    return IgrisGateway(
        None,
        store=store,
        crypto=FixedKeyring("hostile"),
        audit=f"jsonl://{audit}",
        environ={"IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
    )


async def _setup(gw: IgrisGateway, url: str) -> str:
    _, key = await gw.service.create_api_key({"name": "a", "scopes": ["admin"]})
    await gw.service.create_connection(
        {"slug": "conn-a", "name": "A", "upstreamUrl": url, "credential": "tok"}
    )
    return key


async def _hostile(bao: BaoDevServer, requests: list[HostileRequest]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with upstream() as url:
            gw = _gateway(bao, Path(tmp) / "audit.jsonl")
            async with gw:
                key = await _setup(gw, url)
                for request in requests:
                    status = await send_hostile(gw, "conn-a", key, request)
                    assert status in (200, 400, 401, 404, 502), (status, request)
                await assert_all_stored(gw)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile_requests(), min_size=1, max_size=8))
def test_hostile_requests_are_stored_by_the_vault_jsonl_sink(
    bao: BaoDevServer, monkeypatch: pytest.MonkeyPatch, requests: list[HostileRequest]
) -> None:
    """Any bytes in path, query, user, metadata, method and tool: stored, chain verifies."""
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)  # the store reads it from there
    asyncio.run(_hostile(bao, requests))


async def test_a_nul_request_does_not_block_the_vault_audit(
    bao: BaoDevServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/mcp/<slug>/%00 with no key, then 200 requests: all stored within 2 s, verified."""
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    async with upstream() as url:
        gw = _gateway(bao, tmp_path / "audit.jsonl")
        async with gw:
            key = await _setup(gw, url)
            elapsed = await nul_then_normal(gw, "conn-a", key)
            await assert_all_stored(gw)
    assert elapsed < 2.0, elapsed
