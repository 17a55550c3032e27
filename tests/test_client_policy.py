"""The SDK's access policy methods against the real management API (ASGI, in process):
update_api_key, and rate_limit/tools/max_concurrent on create and update."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from igris_mw import IgrisGateway
from igris_mw._errors import ValidationError
from igris_mw.client import AsyncIgrisClient
from igris_mw.testing import FixedKeyring, MemoryStore


@pytest.fixture
async def client() -> AsyncIterator[AsyncIgrisClient]:
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring("sdk-policy"))
    await gw.startup()
    _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    async with AsyncIgrisClient(
        "http://gw.test", admin, transport=httpx.ASGITransport(app=gw)
    ) as c:
        yield c
    await gw.aclose()


async def test_sdk_sets_and_removes_connection_policy(client: AsyncIgrisClient) -> None:
    """create_connection and update_connection carry rate_limit and tools; None removes."""
    conn = await client.create_connection(
        "sdk-pol", "P", "https://example.com/mcp", credential="c",
        rate_limit={"requestsPerMinute": 10}, tools={"deny": ["rm_*"]},
    )  # fmt: skip
    assert conn["rateLimit"] == {"requestsPerMinute": 10, "burst": 10}
    assert conn["tools"] == {"allow": [], "deny": ["rm_*"]}
    conn = await client.update_connection("sdk-pol", rate_limit=None, tools={"allow": ["a"]})
    assert conn["rateLimit"] is None
    assert conn["tools"] == {"allow": ["a"], "deny": []}
    conn = await client.update_connection("sdk-pol", name="renamed")
    assert conn["tools"] == {"allow": ["a"], "deny": []}  # untouched when not given


async def test_sdk_update_api_key(client: AsyncIgrisClient) -> None:
    """update_api_key changes only what it is given; bad input raises ValidationError."""
    issued = await client.create_api_key(
        "agent", ["mcp"], rate_limit={"requestsPerMinute": 5, "burst": 2}, max_concurrent=3
    )
    assert issued.record["maxConcurrent"] == 3
    record = await client.update_api_key(
        issued.id, name="renamed", connections=["a-one"], tools={"deny": ["x"]},
        expires_at="2099-01-01T00:00:00Z",
    )  # fmt: skip
    assert record["name"] == "renamed"
    assert record["connections"] == ["a-one"]
    assert record["rateLimit"] == {"requestsPerMinute": 5, "burst": 2}
    assert record["maxConcurrent"] == 3
    record = await client.update_api_key(
        issued.id, max_concurrent=None, rate_limit=None, connections=None, expires_at=None
    )
    assert (record["maxConcurrent"], record["rateLimit"]) == (None, None)
    assert (record["connections"], record["expiresAt"]) == (None, None)
    with pytest.raises(ValidationError) as caught:
        await client.update_api_key(issued.id, max_concurrent=0)
    assert caught.value.field == "maxConcurrent"
