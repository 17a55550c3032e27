"""End to end through uvicorn with the real MCP SDK: what an upstream refusal and an
oversized body look like to a client."""

from __future__ import annotations

import httpx
import httpx2
import pytest
from e2e_harness import Gateway, client_headers, new_credential, streamable_session
from upstream import UpstreamServer


async def test_sdk_client_sees_502_upstream_auth_failed_without_challenge(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """Upstream 401 + WWW-Authenticate resource_metadata: the SDK sees 502, no challenge."""
    credential = new_credential("refused")
    slug = await gateway.connection(upstream, credential, prefix="refused")
    upstream.guard.refuse(credential)
    seen: list[httpx2.Response] = []

    async def record(response: httpx2.Response) -> None:
        await response.aread()
        seen.append(response)

    with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's own error type varies
        async with streamable_session(
            gateway.url(slug), client_headers(gateway.mcp_key), on_response=record
        ):
            pass
    assert seen, "the client got no answer at all"
    first = seen[0]
    assert first.status_code == 502
    assert first.json()["error"]["code"] == "upstream_auth_failed"
    assert "www-authenticate" not in first.headers
    assert "resource_metadata" not in first.text
    assert credential not in first.text
    # The client tried no OAuth discovery through the gateway.
    assert all(".well-known" not in r.url.path for r in seen)
    assert await gateway.gw.audit.flush(5)
    page = await gateway.gw.service.list_audit(slug, limit=10)
    assert "upstream_auth_failed" in [e.outcome for e in page.items]


async def test_20_mb_post_is_413_and_the_upstream_gets_nothing(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """A 20 MB POST through the real server: 413 request_too_large, no request upstream."""
    credential = new_credential("big")
    slug = await gateway.connection(upstream, credential, prefix="big")
    before = len(upstream.guard.seen_with(credential))
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(
            gateway.url(slug),
            content=b"{" + b" " * (20 * 1024 * 1024) + b"}",
            headers={
                "Authorization": f"Bearer {gateway.mcp_key}",
                "Content-Type": "application/json",
            },
        )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert len(upstream.guard.seen_with(credential)) == before
