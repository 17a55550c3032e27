"""Failed authentications per client address: 429 rate_limited past the limit, cheaply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from igris_mw import IgrisGateway
from igris_mw._auth import generate_key
from igris_mw.testing import FixedKeyring, MemoryStore

RPC = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.key_reads = 0

    async def get_api_key_by_hash(self, key_hash: bytes) -> Any:
        self.key_reads += 1
        return await super().get_api_key_by_hash(key_hash)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def gw() -> AsyncIterator[IgrisGateway]:
    gateway = IgrisGateway(
        None, store=CountingStore(), crypto=FixedKeyring(), auth_failures_per_minute=30
    )
    await gateway.startup()
    _, key = await gateway.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    gateway.test_key = key  # type: ignore[attr-defined]
    yield gateway
    await gateway.aclose()


def _client(gw: IgrisGateway, address: str = "203.0.113.7") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=gw, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://gw.test")


async def test_31st_failure_from_an_address_is_429_until_the_minute_is_over(
    gw: IgrisGateway,
) -> None:
    """30 bad keys get 401; then the address gets 429 with Retry-After, good key or not."""
    clock = Clock()
    assert gw.auth_throttle is not None
    gw.auth_throttle._clock = clock
    bad = {"Authorization": f"Bearer {generate_key()}"}
    good = {"Authorization": f"Bearer {gw.test_key}"}  # type: ignore[attr-defined]
    async with _client(gw) as c, _client(gw, "198.51.100.9") as other:
        for _ in range(30):
            assert (await c.post("/v1/mcp/some-conn", json=RPC, headers=bad)).status_code == 401
        r = await c.post("/v1/mcp/some-conn", json=RPC, headers=bad)
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert (await c.get("/api/v1/virtual-keys", headers=good)).status_code == 429
        # Another address is not affected.
        assert (await other.get("/api/v1/virtual-keys", headers=good)).status_code == 200
        clock.now += 61
        assert (await c.get("/api/v1/virtual-keys", headers=good)).status_code == 200


async def test_throttled_requests_cost_no_store_read(gw: IgrisGateway) -> None:
    """Once an address is throttled its requests never reach the store."""
    store = gw.store
    assert isinstance(store, CountingStore)
    bad = {"Authorization": f"Bearer {generate_key()}"}
    async with _client(gw) as c:
        for _ in range(30):
            await c.post("/v1/mcp/some-conn", json=RPC, headers=bad)
        reads = store.key_reads
        for _ in range(100):
            assert (await c.post("/v1/mcp/some-conn", json=RPC, headers=bad)).status_code == 429
    assert store.key_reads == reads


async def test_management_api_failures_count_too(gw: IgrisGateway) -> None:
    """401s of the management API (missing or bad key) count toward the same limit."""
    async with _client(gw) as c:
        for _ in range(15):
            assert (await c.get("/api/v1/virtual-keys")).status_code == 401
        for _ in range(15):
            r = await c.get("/api/v1/virtual-keys", headers={"Authorization": "Bearer nope"})
            assert r.status_code == 401
        assert (await c.get("/api/v1/virtual-keys")).status_code == 429


async def test_zero_turns_the_throttle_off() -> None:
    """auth_failures_per_minute=0: no throttle at all."""
    gateway = IgrisGateway(
        None, store=MemoryStore(), crypto=FixedKeyring(), auth_failures_per_minute=0
    )
    assert gateway.auth_throttle is None
    async with _client(gateway) as c:
        for _ in range(40):
            assert (await c.get("/api/v1/virtual-keys")).status_code == 401
    await gateway.aclose()


def test_default_limit_comes_from_the_environment() -> None:
    """IGRIS_AUTH_FAILURES_PER_MINUTE sets the limit; 30 without it."""
    env = IgrisGateway(
        None, store=MemoryStore(), crypto=FixedKeyring(),
        environ={"IGRIS_AUTH_FAILURES_PER_MINUTE": "5"},
    )
    assert env.auth_throttle is not None
    assert env.auth_throttle.limit == 5
    default = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring(), environ={})
    assert default.auth_throttle is not None
    assert default.auth_throttle.limit == 30
