"""End to end: metrics, request ids and readiness with the official MCP client
through a gateway served by uvicorn, its metrics app scraped over HTTP."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import pytest
from e2e_harness import (
    Gateway,
    client_headers,
    make_gateway,
    new_credential,
    raw_post,
    serve,
    streamable_session,
)
from prometheus_client.parser import text_string_to_metric_families
from upstream import UpstreamServer

from igris_mw import AuditEvent


@pytest.fixture(scope="module")
async def ops_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Gateway, str]]:
    """A standalone gateway with metrics on, and the base URL of its metrics listener."""
    store_dir: Path = tmp_path_factory.mktemp("ops")
    gw = make_gateway(store_dir, metrics=True)
    async with serve(gw) as base_url, serve(gw.metrics_app, lifespan="off") as metrics_url:
        record, key = await gw.service.create_api_key({"name": "ops mcp", "scopes": ["mcp"]})
        _, admin = await gw.service.create_api_key({"name": "ops admin", "scopes": ["admin"]})
        yield Gateway(gw, base_url, store_dir / "igris.db", key, record.id, admin), metrics_url


async def scrape(metrics_url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(metrics_url + "/metrics")
    assert r.status_code == 200
    return r.text


def requests_total(text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "igris_gateway_requests_total":
                out[(s.labels["connection"], s.labels["outcome"])] = s.value
    return out


def gauge(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return s.value
    raise AssertionError(f"{name} not exposed")


async def gateway_events(gw: Gateway, slug: str) -> list[AuditEvent]:
    assert await gw.gw.audit.flush(5)
    page = await gw.gw.service.list_audit(slug, limit=200)
    return [e for e in page.items if e.kind == "gateway"]


async def settled(gw: Gateway, slugs: list[str], expected: int) -> list[AuditEvent]:
    """Every gateway event of ``slugs`` once ``expected`` are stored (a GET stream
    is audited when it ends, a moment after the client left)."""
    deadline = time.monotonic() + 5
    while True:
        events = [e for slug in slugs for e in await gateway_events(gw, slug)]
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.05)


async def test_scraped_counters_match_mcp_traffic(
    ops_gateway: tuple[Gateway, str], upstream: UpstreamServer
) -> None:
    """After real MCP sessions and refusals, requests_total per connection and
    outcome equals the audit trail, and unknown slugs share one series."""
    gateway, metrics_url = ops_gateway
    before = requests_total(await scrape(metrics_url))
    a = await gateway.connection(upstream, new_credential(), prefix="ops-a")
    b = await gateway.connection(upstream, new_credential(), prefix="ops-b")
    sent_upstream = len(upstream.requests())

    async with streamable_session(gateway.url(a), client_headers(gateway.mcp_key)) as session:
        await session.list_tools()
        await session.call_tool("echo", {"text": "counted"})
    async with streamable_session(gateway.url(b), client_headers(gateway.mcp_key)) as session:
        await session.call_tool("whoami", {})
    assert (await raw_post(gateway.url(b), "ig_not_a_real_key")).status_code == 401
    for _ in range(3):
        r = await raw_post(gateway.url(f"nope-{secrets.token_hex(4)}"), gateway.mcp_key)
        assert r.status_code == 404

    forwarded = len(upstream.requests()) - sent_upstream
    events = await settled(gateway, [a, b], forwarded + 1)
    expected: dict[tuple[str, str], float] = {}
    for e in events:
        key = (e.connection or "", e.outcome or "")
        expected[key] = expected.get(key, 0) + 1
    assert expected[(b, "denied")] == 1
    assert sum(v for (c, o), v in expected.items() if o != "denied") == forwarded

    after = requests_total(await scrape(metrics_url))
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    assert {k: v for k, v in delta.items() if k[0] in (a, b)} == expected
    assert delta[("_unknown", "not_found")] == 3
    assert not [k for k in after if k[0].startswith("nope-")]


async def test_open_stream_gauge_follows_the_get_stream(
    ops_gateway: tuple[Gateway, str], upstream: UpstreamServer
) -> None:
    """While an MCP session holds its GET event stream open the gauge counts it; after, not."""
    gateway, metrics_url = ops_gateway
    slug = await gateway.connection(upstream, new_credential(), prefix="ops-stream")
    async with streamable_session(gateway.url(slug), client_headers(gateway.mcp_key)):
        deadline = time.monotonic() + 5
        while gauge(await scrape(metrics_url), "igris_gateway_open_streams") < 1:
            assert time.monotonic() < deadline, "the GET stream was never counted"
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 5
    while gauge(await scrape(metrics_url), "igris_gateway_open_streams") != 0:
        assert time.monotonic() < deadline, "the closed stream is still counted"
        await asyncio.sleep(0.05)


async def test_every_response_carries_its_audit_event_id(
    ops_gateway: tuple[Gateway, str], upstream: UpstreamServer
) -> None:
    """Each gateway response has X-Igris-Request-Id, and it is that request's audit event id."""
    gateway, _ = ops_gateway
    slug = await gateway.connection(upstream, new_credential(), prefix="ops-rid")
    seen: list[str] = []

    async def on_response(response: httpx2.Response) -> None:
        seen.append(response.headers["x-igris-request-id"])

    async with streamable_session(
        gateway.url(slug), client_headers(gateway.mcp_key), on_response=on_response
    ) as session:
        await session.call_tool("echo", {"text": "id"})
    refused = await raw_post(gateway.url(slug), "ig_not_a_real_key")
    seen.append(refused.headers["x-igris-request-id"])

    events = await settled(gateway, [slug], len(seen))
    assert set(seen) <= {e.id for e in events}
    assert len(set(seen)) == len(seen)


async def test_readyz_and_healthz_on_the_standalone_gateway(
    ops_gateway: tuple[Gateway, str],
) -> None:
    """/readyz says ready with a working store and audit; /healthz stays liveness."""
    gateway, _ = ops_gateway
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=10) as http:
        ready = await http.get("/readyz")
        health = await http.get("/healthz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}
    assert health.json() == {"status": "ok"}


async def test_mcp_session_traced_one_server_and_one_client_span_per_request(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Real MCP traffic with tracing on: per forwarded request one SERVER and one CLIENT
    span, linked, and the upstream got the CLIENT span's traceparent; no canary in spans."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gw = make_gateway(tmp_path, tracer_provider=provider)
    credential = new_credential("trace")
    async with serve(gw) as base_url:
        record, key = await gw.service.create_api_key({"name": "t", "scopes": ["mcp"]})
        gateway = Gateway(gw, base_url, tmp_path / "igris.db", key, record.id, key)
        slug = await gateway.connection(upstream, credential, prefix="ops-trace")
        before = len(upstream.requests())
        async with streamable_session(gateway.url(slug), client_headers(key)) as session:
            await session.call_tool("echo", {"text": "traced"})
        seen = upstream.requests()[before:]
        deadline = time.monotonic() + 5
        while len(exporter.get_finished_spans()) < 2 * len(seen):
            assert time.monotonic() < deadline, "spans missing"
            await asyncio.sleep(0.05)
    provider.shutdown()
    spans = exporter.get_finished_spans()
    servers = {s.context.span_id: s for s in spans if s.kind == SpanKind.SERVER}
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert len(servers) == len(clients) == len(seen)
    client_ids = set()
    for client in clients:
        assert client.parent is not None
        server = servers[client.parent.span_id]  # each client span under a server span
        assert server.context.trace_id == client.context.trace_id
        client_ids.add((f"{client.context.trace_id:032x}", f"{client.context.span_id:016x}"))
    received = set()
    for request in seen:
        traceparent = request.header("traceparent")
        assert traceparent is not None
        _, trace_id, span_id, _ = traceparent.split("-")
        received.add((trace_id, span_id))
    assert received == client_ids
    dump = repr([(s.name, dict(s.attributes or {})) for s in spans])
    assert credential not in dump
    assert key not in dump
    assert {s.attributes.get("mcp.method.name") for s in servers.values() if s.attributes} >= {
        "initialize",
        "tools/call",
    }
