"""Issue 11 on the data plane: response and request header policy, credential reflection,
fixed query parameters, body limits and timeouts, the stream idle timeout."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from igris_mw import IgrisGateway
from igris_mw._auth import generate_key
from igris_mw._proxy.forward import DEFAULT_LIMIT_PER_HOST, Forwarder
from igris_mw._proxy.sse import MAX_HELD_LINE, EndpointRewriter, endpoint_rewrite
from igris_mw.testing import FixedKeyring, MemoryStore

TOKEN = "dp-canary-token-5e1f0a9b77"
RPC = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


class Upstream:
    """Routes by the last path segment; records what arrived (started and completed)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.completed: list[dict[str, Any]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.started.append(request.path_qs)
        body = await request.read()
        self.completed.append(
            {"path": request.path_qs, "headers": dict(request.headers), "body": len(body)}
        )
        auth = request.headers.get("Authorization", "")
        route = request.path.rsplit("/", 1)[-1]
        if route == "refuse":
            return web.json_response(
                {"error": "invalid_token"},
                status=401,
                headers={
                    "WWW-Authenticate": 'Bearer resource_metadata="https://up.example/.well-known/oauth-protected-resource"'
                },
            )
        if route == "echo-body":
            return web.json_response({"error": "bad", "you_sent": auth}, status=400)
        if route == "echo-header":
            return web.json_response({"error": "no"}, status=403, headers={"X-Debug": auth})
        if route == "echo-ok":
            return web.json_response({"echo": auth}, status=200)
        if route == "echo-ok-header":
            return web.json_response({"ok": True}, headers={"X-Debug": auth, "X-Kept": "yes"})
        if route == "redirect-token":
            token = auth.partition(" ")[2]
            return web.Response(
                status=302, headers={"Location": f"https://elsewhere.example/cb?t={token}"}
            )
        if route == "plain-error":
            return web.json_response({"error": "nothing here"}, status=404)
        if route == "headers":
            return web.json_response(
                {"ok": True},
                headers={
                    "Set-Cookie": "sid=upstream; Path=/",
                    "Alt-Svc": 'h3=":443"',
                    "Strict-Transport-Security": "max-age=63072000",
                    "Clear-Site-Data": '"*"',
                    "WWW-Authenticate": "Bearer",
                    "X-Kept": "yes",
                },
            )
        if route == "redirect":
            return web.Response(
                status=302, headers={"Location": f"http://127.0.0.1:{self.port}/elsewhere"}
            )
        if route == "stall":
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b"event: message\ndata: {}\n\n")
            await asyncio.sleep(30)
            return resp
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}})


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield up
    await runner.cleanup()


@pytest.fixture
async def gw(upstream: Upstream) -> AsyncIterator[IgrisGateway]:
    gateway = IgrisGateway(
        None,
        store=MemoryStore(),
        crypto=FixedKeyring(),
        allow_upstream_networks=["127.0.0.0/8"],
        max_request_body=1024 * 1024,
        stream_idle_timeout=0.5,
    )
    await gateway.startup()
    _, key = await gateway.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    gateway.test_key = key  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{upstream.port}"
    await gateway.service.create_connection(
        {"slug": "upx", "name": "up", "upstreamUrl": base, "credential": TOKEN}
    )
    await gateway.service.create_connection(
        {
            "slug": "fixed",
            "name": "fixed",
            "upstreamUrl": base + "/mcp?api_key=fixed&v=2",
            "authType": "none",
        }
    )
    await gateway.service.create_connection(
        {
            "slug": "basic",
            "name": "basic",
            "upstreamUrl": base,
            "authType": "basic",
            "credential": "alice:s3cret-basic-pw",
        }
    )
    yield gateway
    await gateway.aclose()


def _client(gw: IgrisGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gw),
        base_url="http://gw.test",
        headers={"Authorization": f"Bearer {gw.test_key}"},  # type: ignore[attr-defined]
        timeout=10,
    )


async def _outcomes(gw: IgrisGateway, slug: str = "upx") -> list[tuple[int, str]]:
    assert await gw.audit.flush(5)
    page = await gw.service.list_audit(slug, limit=50)
    return [(e.status or 0, e.outcome or "") for e in page.items if e.kind == "gateway"]


# ---------------------------------------------------------------- responses


async def test_upstream_401_is_502_upstream_auth_failed_without_challenge(
    gw: IgrisGateway,
) -> None:
    """An upstream 401 reaches the client as 502 upstream_auth_failed, no WWW-Authenticate."""
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/upx/refuse", json=RPC)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_auth_failed"
    assert "credential" in r.json()["error"]["message"]
    assert "www-authenticate" not in r.headers
    assert "resource_metadata" not in r.text
    assert await _outcomes(gw) == [(502, "upstream_auth_failed")]


async def test_upstream_state_and_policy_headers_are_never_relayed(gw: IgrisGateway) -> None:
    """Set-Cookie, Alt-Svc, HSTS, Clear-Site-Data and WWW-Authenticate are dropped; others kept."""
    async with _client(gw) as c:
        r = await c.get("/v1/mcp/upx/headers")
    assert r.status_code == 200
    for name in (
        "set-cookie",
        "alt-svc",
        "strict-transport-security",
        "clear-site-data",
        "www-authenticate",
    ):
        assert name not in r.headers, name
    assert r.headers["x-kept"] == "yes"


@pytest.mark.parametrize("route", ["echo-body", "echo-header"])
async def test_error_echoing_the_credential_is_502_and_never_shows_it(
    gw: IgrisGateway, route: str
) -> None:
    """An error response carrying the injected credential (body or header) is 502, canary absent."""
    async with _client(gw) as c:
        r = await c.post(f"/v1/mcp/upx/{route}", json=RPC)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_reflected_credential"
    assert TOKEN not in r.text
    assert all(TOKEN not in v for v in r.headers.values())
    assert await _outcomes(gw) == [(502, "upstream_reflected_credential")]


@pytest.mark.parametrize("route", ["echo-ok-header", "redirect-token"])
async def test_success_header_echoing_the_credential_is_dropped(
    gw: IgrisGateway, route: str
) -> None:
    """A 2xx/3xx header carrying the injected credential is dropped; the response is relayed."""
    async with _client(gw) as c:
        r = await c.get(f"/v1/mcp/upx/{route}")
    assert r.status_code in (200, 302)
    assert all(TOKEN not in v for v in r.headers.values())
    assert "x-debug" not in r.headers
    assert "location" not in r.headers
    if r.status_code == 200:
        assert r.headers["x-kept"] == "yes"
        assert r.json() == {"ok": True}


async def test_basic_password_echo_is_caught_too(gw: IgrisGateway) -> None:
    """For basic auth the bare password (and the user:password) count as the credential."""
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/basic/echo-body", json=RPC)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_reflected_credential"
    assert "s3cret-basic-pw" not in r.text
    assert base64.b64encode(b"alice:s3cret-basic-pw").decode() not in r.text


async def test_plain_upstream_errors_are_relayed_as_they_are(gw: IgrisGateway) -> None:
    """An error without the credential reaches the client with its status and body."""
    async with _client(gw) as c:
        r = await c.get("/v1/mcp/upx/plain-error")
    assert r.status_code == 404
    assert r.json() == {"error": "nothing here"}


async def test_redirects_are_relayed_unchanged_and_never_followed(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A 302 reaches the client with its Location as it was; the gateway does not follow it."""
    async with _client(gw) as c:
        r = await c.get("/v1/mcp/upx/redirect")
    assert r.status_code == 302
    assert r.headers["location"] == f"http://127.0.0.1:{upstream.port}/elsewhere"
    assert upstream.started == ["/redirect"]


# ----------------------------------------------------------------- requests


async def test_client_routing_and_metadata_headers_are_dropped(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """Forwarded, X-Forwarded-*, X-Real-IP and cloud metadata headers never reach the upstream."""
    dropped = {
        "Forwarded": "for=1.2.3.4",
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Real-IP": "1.2.3.4",
        "Metadata-Flavor": "Google",
        "X-aws-ec2-metadata-token": "t",
        "X-aws-ec2-metadata-token-ttl-seconds": "60",
        "Metadata": "true",
    }
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/upx", json=RPC, headers={**dropped, "X-Custom": "kept"})
    assert r.status_code == 200
    seen = {k.lower() for k in upstream.completed[-1]["headers"]}
    assert not seen & {k.lower() for k in dropped}
    assert "x-custom" in seen


@pytest.mark.parametrize(
    "query",
    [
        "api_key=evil",
        "API_KEY=evil",
        "api_key[]=evil",
        "api%5Fkey=evil",
        "x=1&v=3",
        "x=1;api_key=evil",
    ],
)
async def test_fixed_query_parameters_cannot_be_repeated_or_overridden(
    gw: IgrisGateway, upstream: Upstream, query: str
) -> None:
    """A client query naming a parameter upstreamUrl fixes is a 400; nothing goes upstream."""
    async with _client(gw) as c:
        r = await c.post(f"/v1/mcp/fixed?{query}", json=RPC)
    assert r.status_code == 400
    assert upstream.started == []


async def test_other_query_parameters_are_appended(gw: IgrisGateway, upstream: Upstream) -> None:
    """Parameters upstreamUrl does not fix are appended after its own."""
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/fixed?session=abc", json=RPC)
    assert r.status_code == 200
    assert upstream.completed[-1]["path"] == "/mcp?api_key=fixed&v=2&session=abc"


@pytest.mark.parametrize("path", ["/a/..;/b", "/..;x/admin", "/a/%2e%2e;jsessionid=1/b", "/.;/x"])
async def test_servlet_dot_segments_are_refused(
    gw: IgrisGateway, upstream: Upstream, path: str
) -> None:
    """'..;' and '.;' segments are refused like '..'."""
    async with _client(gw) as c:
        r = await c.get(f"/v1/mcp/upx{path}")
    assert r.status_code == 400
    assert upstream.started == []


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Cookie",
        "X-Forwarded-For",
        "TE",
        "Upgrade",
        "mcp-session-id",
    ],
)
async def test_header_name_cannot_be_a_framing_or_routing_header(
    gw: IgrisGateway, name: str
) -> None:
    """headerName naming a hop-by-hop, framing or routing header is 422; nothing is stored."""
    async with _client(gw) as c:
        r = await c.post(
            "/api/v1/virtual-keys",
            json={
                "slug": "hdr",
                "name": "h",
                "upstreamUrl": "https://mcp.example/",
                "authType": "header",
                "headerName": name,
                "credential": "x" * 12,
            },
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "headerName"
        assert (await c.get("/api/v1/virtual-keys/hdr")).status_code == 404
        ok = await c.post(
            "/api/v1/virtual-keys",
            json={
                "slug": "hdr",
                "name": "h",
                "upstreamUrl": "https://mcp.example/",
                "authType": "header",
                "headerName": "X-Api-Key",
                "credential": "x" * 12,
            },
        )
        assert ok.status_code == 201


# ------------------------------------------------------------------- limits


async def test_oversized_body_with_content_length_is_413_before_upstream(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A body over the limit announced by Content-Length: 413, the upstream sees nothing."""
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/upx", content=b"x" * (2 * 1024 * 1024))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert upstream.started == []
    assert await _outcomes(gw) == [(413, "request_too_large")]


async def test_oversized_chunked_body_is_cut_off_and_the_upstream_gets_no_whole_request(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A 20 MB chunked body: 413, the upstream request is aborted, never completed."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(320):
            yield b"y" * 65536

    async with _client(gw) as c:
        r = await c.post("/v1/mcp/upx", content=chunks())
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    await asyncio.sleep(0.2)
    assert upstream.completed == []


async def test_stalled_body_is_cut_off_with_408(gw: IgrisGateway, upstream: Upstream) -> None:
    """A client that stops sending its body mid-way gets 408; the upstream gets no request."""
    gw.forwarder.body_timeout = 0.3

    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"jsonrpc": "2.0",'
        await asyncio.sleep(5)
        yield b"}"

    async with _client(gw) as c:
        r = await asyncio.wait_for(c.post("/v1/mcp/upx", content=stalls()), 3)
    assert r.status_code == 408
    assert upstream.completed == []


async def test_silent_stream_is_closed_after_the_idle_timeout(gw: IgrisGateway) -> None:
    """A quiet upstream stream is closed after stream_idle_timeout; outcome upstream_idle."""
    async with _client(gw) as c:
        started = asyncio.get_running_loop().time()
        async with c.stream("GET", "/v1/mcp/upx/stall") as r:
            assert r.status_code == 200
            body = b"".join([chunk async for chunk in r.aiter_bytes()])
        elapsed = asyncio.get_running_loop().time() - started
    assert body == b"event: message\ndata: {}\n\n"
    assert elapsed < 5
    assert await _outcomes(gw) == [(200, "upstream_idle")]


def test_pool_is_bounded_per_host_by_default() -> None:
    """The forwarder's connection pool has a per-host bound by default (docs/security.md)."""
    assert DEFAULT_LIMIT_PER_HOST == 1024
    assert Forwarder()._limit_per_host == 1024


def test_endpoint_rewriter_line_buffer_is_bounded() -> None:
    """A hostile upstream's endless endpoint data line is let through, not held without bound."""
    rewriter = EndpointRewriter(endpoint_rewrite("/legacy", "/v1/mcp/s"))
    out = rewriter.feed(b"event: endpoint\ndata: /legacy/")
    for _ in range(40):
        out += rewriter.feed(b"a" * 4096)
    assert len(rewriter._partial) <= MAX_HELD_LINE
    out += rewriter.feed(b"\n\n") + rewriter.flush()
    assert out.startswith(b"event: endpoint\ndata: /legacy/aaaa")
    assert len(out) == len(b"event: endpoint\ndata: /legacy/") + 40 * 4096 + 2


def test_gateway_reads_limits_from_the_environment() -> None:
    """IGRIS_MAX_REQUEST_BODY and IGRIS_STREAM_IDLE_TIMEOUT set the forwarder's limits."""
    gateway = IgrisGateway(
        None,
        store=MemoryStore(),
        crypto=FixedKeyring(),
        environ={"IGRIS_MAX_REQUEST_BODY": "1000", "IGRIS_STREAM_IDLE_TIMEOUT": "12"},
    )
    assert gateway.forwarder.max_body == 1000
    assert gateway.forwarder.idle_timeout == 12.0
    default = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring(), environ={})
    assert default.forwarder.max_body == 8 * 1024 * 1024
    assert default.forwarder.idle_timeout == 300.0
    assert json.dumps(default.egress.allowed) == "[]"


# ------------------------------------------------- errors for the unauthenticated

SECRET_PLACES = ("/srv/secret-dir/igris.db", "db-host.internal", "vault.internal:8200")


class FlakyStore(MemoryStore):
    """Opens fine, then every key lookup fails naming where the store lives."""

    async def get_api_key_by_hash(self, key_hash: bytes) -> Any:
        from igris_mw import StoreUnavailable

        raise StoreUnavailable(
            f"the SQLite store {SECRET_PLACES[0]!r} is unavailable "
            f"(replica {SECRET_PLACES[1]}, vault {SECRET_PLACES[2]})"
        )


class DownStore(MemoryStore):
    async def open(self) -> None:
        from igris_mw import StoreUnavailable

        raise StoreUnavailable(f"postgres unreachable at postgresql://u:***@{SECRET_PLACES[1]}/x")


@pytest.mark.parametrize("store_class", [FlakyStore, DownStore])
async def test_5xx_for_unauthenticated_callers_names_no_store_or_host(
    store_class: type[MemoryStore], caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 to a caller who has not authenticated names no store path, host or address."""
    gateway = IgrisGateway(None, store=store_class(), crypto=FixedKeyring())
    key = generate_key()  # well formed, so the store is asked
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gw.test"
        ) as c:
            answers = [
                await c.post(
                    "/v1/mcp/some-slug", json=RPC, headers={"Authorization": f"Bearer {key}"}
                ),
                await c.get("/api/v1/virtual-keys", headers={"Authorization": f"Bearer {key}"}),
            ]
    finally:
        await gateway.aclose()
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "store_unavailable"
        for place in SECRET_PLACES:
            assert place not in r.text
