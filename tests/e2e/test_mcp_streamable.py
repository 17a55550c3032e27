"""End to end: the official MCP client, over Streamable HTTP, through the gateway."""

from __future__ import annotations

import asyncio
import json
import time

from e2e_harness import Gateway, client_headers, new_credential, streamable_session
from mcp.types import TextContent
from upstream import UpstreamServer, fingerprint

from igris_mw import AuditEvent

USER_HEADERS = {
    "X-Igris-User": "alice@example.com",
    "X-Igris-Metadata": json.dumps({"role": "developer", "ticket": 42}),
    "Cookie": "session=client-cookie-must-not-pass",
}


def _text(result: object) -> str:
    content = result.content  # type: ignore[attr-defined]
    assert isinstance(content[0], TextContent)
    return content[0].text


async def _gateway_events(gateway: Gateway, slug: str, expected: int) -> list[AuditEvent]:
    """The connection's gateway audit events, once ``expected`` of them are stored.

    A streamed GET is audited when it ends, which can be a moment after the
    client has closed: poll for a short while instead of guessing a sleep.
    """
    deadline = time.monotonic() + 5
    while True:
        await gateway.gw.audit.flush()
        page = await gateway.gw.service.list_audit(slug, limit=200)
        events = [e for e in page.items if e.kind == "gateway"]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.05)


async def test_initialize_list_call_with_injected_credential(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """The MCP client initializes, lists and calls tools; the upstream sees only the credential."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    before = len(upstream.requests())

    headers = client_headers(gateway.mcp_key, USER_HEADERS)
    async with streamable_session(gateway.url(slug), headers) as session:
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} == {"echo", "whoami", "slow_progress"}
        assert _text(await session.call_tool("echo", {"text": "hello through igris"})) == (
            "hello through igris"
        )
        assert _text(await session.call_tool("whoami", {})) == fingerprint(credential)

    seen = upstream.requests()[before:]
    assert seen, "no request reached the upstream"
    for request in seen:
        assert request.header("authorization") == f"Bearer {credential}"
        dump = request.all_header_bytes()
        assert gateway.mcp_key not in dump
        assert "ig_" not in dump
        assert not [name for name, _ in request.headers if name.startswith("x-igris-")]
        assert "alice@example.com" not in dump
        assert request.header("cookie") is None


async def test_session_id_get_stream_and_delete_pass(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """Mcp-Session-Id goes both ways; the GET stream and the closing DELETE reach the upstream."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    before = len(upstream.requests())

    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        await session.call_tool("echo", {"text": "x"})

    seen = upstream.requests()[before:]
    first, rest = seen[0], seen[1:]
    # The upstream minted the id in its answer to initialize; the client can only
    # send it back if the gateway relayed that response header.
    assert first.method == "POST"
    assert first.header("mcp-session-id") is None
    session_ids = {r.header("mcp-session-id") for r in rest}
    assert len(session_ids) == 1
    assert None not in session_ids
    assert all(r.header("mcp-protocol-version") for r in rest)
    methods = [r.method for r in rest]
    assert "GET" in methods
    assert methods[-1] == "DELETE"


async def test_one_audit_event_per_request(gateway: Gateway, upstream: UpstreamServer) -> None:
    """Each proxied request leaves one audit event; tools/call names its tool."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    before = len(upstream.requests())

    headers = client_headers(gateway.mcp_key, USER_HEADERS)
    async with streamable_session(gateway.url(slug), headers) as session:
        await session.call_tool("echo", {"text": "audited"})
        await session.call_tool("whoami", {})

    seen = upstream.requests()[before:]
    events = await _gateway_events(gateway, slug, len(seen))
    assert len(events) == len(seen)
    assert sorted(e.method or "" for e in events) == sorted(r.method for r in seen)
    calls = [e for e in events if e.rpc_method == "tools/call"]
    assert sorted(e.tool or "" for e in calls) == ["echo", "whoami"]
    assert [e for e in events if e.rpc_method == "initialize"]
    assert [e for e in events if e.outcome == "ok"]
    for event in events:
        assert event.connection == slug
        assert event.api_key_id == gateway.mcp_key_id
        assert event.user == "alice@example.com"
        assert event.metadata == {"role": "developer", "ticket": 42}
        # The client hangs up on its GET stream when it leaves, and may hang up on a
        # POST's SSE answer once it has read the one event it wanted: both are
        # truthfully "client_closed"; nothing may be an error or a refusal.
        assert event.outcome in ("ok", "client_closed"), (event.method, event.rpc_method)
        assert event.status is not None
        assert 200 <= event.status < 300
        assert event.credential_version == 1
        assert event.path is not None
        assert event.path.startswith(f"/v1/mcp/{slug}")
    for event in calls:
        assert event.bytes_in > 0
        assert event.bytes_out > 0


async def test_progress_reaches_client_before_result(
    gateway: Gateway, upstream: UpstreamServer
) -> None:
    """Progress notifications stream through: the first arrives long before the result."""
    credential = new_credential()
    slug = await gateway.connection(upstream, credential)
    steps, delay = 4, 0.4
    notes: list[tuple[float, float]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((time.monotonic(), progress))

    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)) as session:
        started = time.monotonic()
        result = await session.call_tool(
            "slow_progress", {"steps": steps, "delay": delay}, progress_callback=on_progress
        )
        finished = time.monotonic()

    assert _text(result) == f"done after {steps} steps"
    assert [value for _, value in notes] == [1, 2, 3, 4]
    total_delay = steps * delay
    assert finished - started >= total_delay
    # Buffered, every notification would land together with the result.
    assert notes[0][0] < finished - 0.75 * total_delay
    assert notes[1][0] - notes[0][0] > delay / 2
