"""End to end: the official MCP client, over the legacy HTTP+SSE transport, through the gateway."""

from __future__ import annotations

import asyncio
import time

from e2e_harness import Gateway, client_headers, legacy_session, new_credential
from mcp.types import TextContent
from upstream import UpstreamServer, fingerprint


def _text(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert isinstance(content[0], TextContent)
    return content[0].text


async def test_legacy_sse_initialize_list_call(gateway: Gateway, upstream: UpstreamServer) -> None:
    """The SSE client works through <gatewayUrl>/sse: the endpoint event is rewritten."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")
    before = len(upstream.requests())

    headers = client_headers(gateway.mcp_key, {"X-Igris-User": "bob"})
    async with legacy_session(gateway.url(slug, "/sse"), headers) as session:
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == {"echo", "whoami", "slow_progress"}
        assert _text(await session.call_tool("echo", {"text": "legacy hello"})) == "legacy hello"
        assert _text(await session.call_tool("whoami", {})) == fingerprint(credential)

    seen = upstream.requests()[before:]
    assert seen[0].method == "GET"
    assert seen[0].path == "/legacy/sse"
    posts = [r for r in seen if r.method == "POST"]
    # initialize, notifications/initialized, tools/list, two tools/call: all
    # posted to the upstream's own message path, reached through the gateway.
    assert len(posts) >= 5
    for request in posts:
        assert request.path == "/legacy/messages/"
        assert request.query.startswith("session_id=")
    for request in seen:
        assert request.header("authorization") == f"Bearer {credential}"
        assert gateway.mcp_key not in request.all_header_bytes()
        assert not [name for name, _ in request.headers if name.startswith("x-igris-")]


async def test_legacy_sse_audits_tool_calls(gateway: Gateway, upstream: UpstreamServer) -> None:
    """Messages posted through the rewritten endpoint are audited with their tool name."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")

    async with legacy_session(gateway.url(slug, "/sse"), client_headers(gateway.mcp_key)) as s:
        await s.call_tool("echo", {"text": "audit me"})

    await gateway.gw.audit.flush()
    page = await gateway.gw.service.list_audit(slug, limit=200)
    calls = [e for e in page.items if e.rpc_method == "tools/call"]
    assert [e.tool for e in calls] == ["echo"]
    assert calls[0].path == f"/v1/mcp/{slug}/messages/"
    assert calls[0].outcome == "ok"


async def test_legacy_sse_progress_streams(gateway: Gateway, upstream: UpstreamServer) -> None:
    """Over the SSE stream too, the first progress notification precedes the result by far."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")
    steps, delay = 3, 0.4
    notes: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(time.monotonic())

    async with legacy_session(gateway.url(slug, "/sse"), client_headers(gateway.mcp_key)) as s:
        started = time.monotonic()
        result = await s.call_tool(
            "slow_progress", {"steps": steps, "delay": delay}, progress_callback=on_progress
        )
        finished = time.monotonic()

    assert _text(result) == f"done after {steps} steps"
    assert len(notes) == steps
    assert finished - started >= steps * delay
    assert notes[0] < finished - 0.75 * steps * delay


async def test_client_leaving_closes_the_upstream_stream(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """When the SSE client goes away, the gateway closes its upstream stream within a second."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential, path="/legacy")
    want = f"Bearer {credential}"

    async with legacy_session(gateway.url(slug, "/sse"), client_headers(gateway.mcp_key)) as s:
        await s.call_tool("echo", {"text": "x"})
        assert [r for r in upstream.guard.open_requests() if r.header("authorization") == want]
    left = time.monotonic()

    while [r for r in upstream.guard.open_requests() if r.header("authorization") == want]:
        assert time.monotonic() - left < 1.5, "the upstream SSE stream outlived its client"
        await asyncio.sleep(0.02)
