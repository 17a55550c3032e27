"""Tests for igris_mw._ops.tracing: spans per gateway request with the SDK's
in-memory exporter, against a real aiohttp upstream on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from igris_mw import IgrisGateway
from igris_mw.testing import FixedKeyring, MemoryStore

CREDENTIAL = "trace-credential-canary-8Rw"
USER_CANARY = "trace-user-canary@example.com"
METADATA_CANARY = "trace-metadata-canary-4Kq"
BODY_CANARY = "trace-body-canary-1Zs"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.fixture
async def traced(
    upstream: tuple[str, list[dict[str, str]]],
) -> AsyncIterator[tuple[IgrisGateway, str, InMemorySpanExporter, list[dict[str, str]]]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    url, seen = upstream
    gw = IgrisGateway(
        None, store=MemoryStore(), crypto=FixedKeyring("trace"), tracer_provider=provider
    )
    await gw.startup()
    _, key = await gw.service.create_api_key({"name": "k", "scopes": ["mcp"]})
    await gw.service.create_connection(
        {"slug": "traced", "name": "t", "upstreamUrl": url + "/mcp", "credential": CREDENTIAL}
    )
    seen.clear()
    yield gw, key, exporter, seen
    await gw.aclose()
    provider.shutdown()


async def post(gw: IgrisGateway, key: str, body: Any, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=gw)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as c:
        return await c.post(
            "/v1/mcp/traced",
            json=body,
            headers={"Authorization": f"Bearer {key}", **headers},
        )


CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": BODY_CANARY}},
}


def by_kind(spans: tuple[ReadableSpan, ...]) -> dict[SpanKind, list[ReadableSpan]]:
    out: dict[SpanKind, list[ReadableSpan]] = {}
    for span in spans:
        out.setdefault(span.kind, []).append(span)
    return out


def traceparent_ids(value: str) -> tuple[str, str]:
    version, trace_id, span_id, _ = value.split("-")
    assert version == "00"
    return trace_id, span_id


async def test_one_server_and_one_client_span_linked_and_propagated(traced: Any) -> None:
    """A request: one SERVER span (child of the client's traceparent) and one CLIENT
    span under it, whose context is the traceparent the upstream received."""
    gw, key, exporter, seen = traced
    r = await post(gw, key, CALL, traceparent=CLIENT_TRACEPARENT)
    assert r.status_code == 200
    kinds = by_kind(exporter.get_finished_spans())
    assert set(kinds) == {SpanKind.SERVER, SpanKind.CLIENT}
    (server,), (client,) = kinds[SpanKind.SERVER], kinds[SpanKind.CLIENT]
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id

    trace_id, span_id = traceparent_ids(seen[-1]["traceparent"])
    assert trace_id == CLIENT_TRACE
    assert span_id == f"{client.context.span_id:016x}"  # not the client's own span

    attrs = dict(server.attributes or {})
    assert attrs["igris.connection"] == "traced"
    assert attrs["mcp.method.name"] == "tools/call"
    assert attrs["gen_ai.tool.name"] == "echo"
    assert attrs["igris.outcome"] == "ok"
    assert attrs["http.response.status_code"] == 200
    assert str(attrs["igris.api_key_id"]).startswith("key_")
    assert attrs["igris.request_id"] == r.headers["x-igris-request-id"]
    assert server.start_time is not None
    assert client.start_time is not None
    assert server.start_time <= client.start_time
    assert server.end_time is not None
    assert client.end_time is not None
    assert client.end_time <= server.end_time


async def test_a_new_trace_without_client_context(traced: Any) -> None:
    """Without a traceparent the server span starts a trace that the upstream joins."""
    gw, key, exporter, seen = traced
    await post(gw, key, CALL)
    (server,) = by_kind(exporter.get_finished_spans())[SpanKind.SERVER]
    assert server.parent is None
    trace_id, _ = traceparent_ids(seen[-1]["traceparent"])
    assert trace_id == f"{server.context.trace_id:032x}"


async def test_meta_trace_context_is_the_parent_when_no_header(traced: Any) -> None:
    """MCP 2026-07-28: params._meta.traceparent parents the server span; the body passes as is."""
    gw, key, exporter, seen = traced
    body = {**CALL, "params": {**CALL["params"], "_meta": {"traceparent": CLIENT_TRACEPARENT}}}
    await post(gw, key, body)
    (server,) = by_kind(exporter.get_finished_spans())[SpanKind.SERVER]
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert traceparent_ids(seen[-1]["traceparent"])[0] == CLIENT_TRACE


async def test_header_wins_over_meta(traced: Any) -> None:
    """When both are sent, the traceparent header is the parent."""
    gw, key, exporter, _ = traced
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    body = {**CALL, "params": {**CALL["params"], "_meta": {"traceparent": other}}}
    await post(gw, key, body, traceparent=CLIENT_TRACEPARENT)
    (server,) = by_kind(exporter.get_finished_spans())[SpanKind.SERVER]
    assert f"{server.context.trace_id:032x}" == CLIENT_TRACE


async def test_refused_request_has_a_server_span_only(traced: Any) -> None:
    """A request the gateway refuses gets one SERVER span with its status, no CLIENT span."""
    gw, _, exporter, seen = traced
    r = await post(gw, "ig_bogus", CALL, traceparent=CLIENT_TRACEPARENT)
    assert r.status_code == 401
    spans = exporter.get_finished_spans()
    assert [s.kind for s in spans] == [SpanKind.SERVER]
    attrs = dict(spans[0].attributes or {})
    assert attrs["http.response.status_code"] == 401
    assert attrs["igris.outcome"] == "denied"
    assert f"{spans[0].context.trace_id:032x}" == CLIENT_TRACE
    assert seen == []


async def test_no_span_attribute_holds_a_secret_or_header_value(traced: Any) -> None:
    """Canaries (credential, key, user, metadata, cookie, body) appear in no span
    name, attribute, event or status."""
    gw, key, exporter, _ = traced
    await post(
        gw,
        key,
        CALL,
        **{
            "X-Igris-User": USER_CANARY,
            "X-Igris-Metadata": json.dumps({"m": METADATA_CANARY}),
            "Cookie": "c=cookie-canary-6Tb",
            "traceparent": CLIENT_TRACEPARENT,
        },
    )
    await post(gw, "ig_" + "x" * 40, CALL)
    spans = exporter.get_finished_spans()
    assert len(spans) == 3
    dump = "\n".join(
        json.dumps(
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in s.events],
                "status": s.status.description,
                "resource": dict(s.resource.attributes),
            },
            default=str,
        )
        for s in spans
    )
    for canary in (
        CREDENTIAL,
        key,
        "ig_" + "x" * 40,
        USER_CANARY,
        METADATA_CANARY,
        "cookie-canary-6Tb",
        BODY_CANARY,
        "Bearer",
    ):
        assert canary not in dump


def test_tracing_is_off_and_imports_nothing_without_endpoint_or_provider() -> None:
    """No endpoint and no provider: no tracer, and OpenTelemetry is never imported."""
    script = (
        "import sys\n"
        "from igris_mw import IgrisGateway\n"
        "from igris_mw.testing import FixedKeyring, MemoryStore\n"
        "gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring('t'), metrics=True)\n"
        "assert gw._tracing is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


async def test_endpoint_variable_turns_tracing_on() -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT set and the extra installed: a tracer exporting by OTLP."""
    gw = IgrisGateway(
        None,
        store=MemoryStore(),
        crypto=FixedKeyring("t"),
        environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert gw._tracing is not None
    gw._tracing.shutdown()
