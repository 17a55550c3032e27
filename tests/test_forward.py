"""Tests for igris_mw._proxy.forward: forwarding through a real uvicorn server to a real
upstream: headers, URL, streaming, SSE rewrite, timeouts, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from aiohttp import web

import igris_mw._proxy.forward as forward_module
from igris_mw._proxy import (
    BodyPrefix,
    Forwarder,
    ProxyResult,
    Target,
    read_body_prefix,
)

SECRET = "sk-live-upstream-credential-0123456789"
SECRET2 = "second-secret-api-key-value"
PEEK = 1024


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


# ---------------------------------------------------------------- the upstream


class Upstream:
    """A real aiohttp.web MCP-ish upstream that records what it saw."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.uploads: dict[str, list[tuple[float, int]]] = {}
        self.closed_at: dict[str, float] = {}
        self.port = 0

    def app(self) -> web.Application:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hits.append(request.path)
            resp: web.StreamResponse = await handler(request)
            return resp

        app = web.Application(middlewares=[record])
        app.router.add_route("*", "/echo{tail:.*}", self.echo)
        app.router.add_route("*", "/legacy/messages/", self.echo)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/legacy/sse", self.legacy_sse)
        app.router.add_get("/gzip", self.gzipped)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/slow-headers", self.slow_headers)
        app.router.add_get("/slow-stream", self.slow_stream)
        app.router.add_get("/forever", self.forever)
        app.router.add_get("/broken", self.broken)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path.split("?", 1)[0],
                "query": request.raw_path.partition("?")[2],
                "headers": [[k.decode().lower(), v.decode()] for k, v in request.raw_headers],
                "size": size,
                "sha256": digest.hexdigest(),
            }
        )

    async def upload(self, request: web.Request) -> web.Response:
        seen = self.uploads.setdefault(request.query["t"], [])
        async for chunk in request.content.iter_any():
            seen.append((time.monotonic(), len(chunk)))
        return web.json_response({"size": sum(n for _, n in seen)})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return resp

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(b"event: message\ndata: first\n\n")
        await asyncio.sleep(1.0)
        await resp.write(b"event: message\ndata: second\n\n")
        await resp.write_eof()
        return resp

    async def legacy_sse(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        mode = request.query["mode"]
        if mode == "relative":
            target = "/legacy/messages/?session_id=abc123"
        else:
            target = f"http://127.0.0.1:{self.port}/legacy/messages/?session_id=abc123"
        event = f"event: endpoint\r\ndata: {target}\r\n\r\n".encode()
        if mode == "split":
            for piece in (event[:10], event[10:16], event[16:30], event[30:-3], event[-3:]):
                await resp.write(piece)
                await asyncio.sleep(0.05)
        else:
            await resp.write(event)
        await resp.write(b'event: message\r\ndata: {"path": "/legacy/x"}\r\n\r\n')
        await resp.write_eof()
        return resp

    async def gzipped(self, request: web.Request) -> web.Response:
        body = gzip.compress(json.dumps({"hello": "world" * 50}).encode())
        return web.Response(
            body=body,
            headers={
                "Content-Encoding": "gzip",
                "Content-Type": "application/json",
                "Set-Cookie": "upstream_session=1; Path=/",
                "Mcp-Session-Id": "sess-1",
            },
        )

    async def redirect(self, request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/echo/moved"})

    async def slow_headers(self, request: web.Request) -> web.Response:
        await asyncio.sleep(2.0)
        return web.Response(text="late")

    async def slow_stream(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        for i in range(3):
            await resp.write(f"data: tick{i}\n\n".encode())
            await asyncio.sleep(0.25)
        await resp.write_eof()
        return resp

    async def forever(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        try:
            while True:
                await resp.write(b"data: tick\n\n")
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            self.closed_at[request.query["t"]] = time.monotonic()
            raise

    async def broken(self, request: web.Request) -> web.StreamResponse:
        resp = await self._sse(request)
        await resp.write(b"data: one\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return resp


# ---------------------------------------------------------------- the gateway


class _Server(uvicorn.Server):
    """uvicorn in-process, leaving the test process's signal handlers alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MiniGateway:
    """A tiny ASGI app standing in for _gateway.py: /v1/mcp/<slug><subpath> -> forward."""

    def __init__(self, targets: dict[str, tuple[Forwarder, Target]]) -> None:
        self.targets = targets
        self.results: dict[str, ProxyResult] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        parts = scope["raw_path"].decode("latin-1").split("/", 4)
        slug = parts[3]
        subpath = "/" + parts[4] if len(parts) > 4 else ""
        forwarder, target = self.targets[slug]
        prefix = None
        if scope["method"] == "POST" and slug == "main":
            prefix = await read_body_prefix(receive, PEEK)
        result = await forwarder.forward(
            scope,
            receive,
            send,
            target,
            subpath,
            gateway_prefix=scope.get("root_path", "") + f"/v1/mcp/{slug}",
            prefix=prefix,
        )
        token = dict(
            p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p
        ).get("t")
        if token:
            self.results[token] = result

    async def result(self, token: str) -> ProxyResult:
        for _ in range(200):
            if token in self.results:
                return self.results[token]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no result for {token}")


class Env:
    def __init__(self, upstream: Upstream, gateway: MiniGateway, url: str) -> None:
        self.upstream = upstream
        self.gateway = gateway
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])


@pytest_asyncio.fixture(scope="module")
async def env() -> AsyncIterator[Env]:
    upstream = Upstream()
    up_sock = _free_socket()
    upstream.port = up_sock.getsockname()[1]
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, up_sock).start()
    base = f"http://127.0.0.1:{upstream.port}"

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    down_port = closed.getsockname()[1]
    closed.close()

    normal = Forwarder(timeout=10.0)
    fast = Forwarder(timeout=0.3)
    await normal.start()
    await fast.start()
    inject = (("Authorization", f"Bearer {SECRET}"), ("X-Api-Key", SECRET2))
    gateway = MiniGateway(
        {
            "main": (normal, Target(base, inject=inject)),
            "nopeek": (normal, Target(base, inject=inject)),
            "exact": (normal, Target(f"{base}/echo/exact?fixed=1", inject=inject)),
            "legacy": (normal, Target(f"{base}/legacy", inject=inject)),
            "down": (normal, Target(f"http://127.0.0.1:{down_port}/mcp", inject=inject)),
            "fast": (fast, Target(base, inject=inject)),
        }
    )
    gw_sock = _free_socket()
    config = uvicorn.Config(
        gateway, log_level="warning", lifespan="off", ws="none", timeout_graceful_shutdown=1
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[gw_sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield Env(upstream, gateway, f"http://127.0.0.1:{gw_sock.getsockname()[1]}")
    finally:
        server.should_exit = server.force_exit = True
        await task
        await normal.close()
        await fast.close()
        await runner.cleanup()


@pytest_asyncio.fixture
async def client(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=env.url, timeout=10.0) as c:
        yield c


def _headers(payload: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in payload["headers"]:
        out.setdefault(name, []).append(value)
    return out


async def _raw(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    return reader, writer


# ---------------------------------------------------------------- end to end


async def test_injects_credential_and_strips_gateway_and_hop_headers(
    env: Env, client: httpx.AsyncClient
) -> None:
    """The upstream sees the injected credential, the MCP headers, and none of the stripped ones."""
    resp = await client.post(
        "/v1/mcp/nopeek/echo/tool?a=1&b=%2F&t=hdr",
        content=b'{"jsonrpc":"2.0","method":"ping","id":1}',
        headers={
            "Authorization": "Bearer ig_clientgatewaykey",
            "Cookie": "sid=client-cookie",
            "X-Igris-User": "alice",
            "X-Igris-Metadata": '{"role":"dev"}',
            "X-Api-Key": "client-supplied-should-vanish",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "named-in-connection",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": "sess-42",
            "MCP-Protocol-Version": "2025-06-18",
            "Last-Event-ID": "ev-7",
            "Accept-Encoding": "gzip",
        },
    )
    assert resp.status_code == 200
    payload = resp.json()
    seen = _headers(payload)
    assert seen["authorization"] == [f"Bearer {SECRET}"]
    assert seen["x-api-key"] == [SECRET2]
    for gone in ("cookie", "x-igris-user", "x-igris-metadata", "x-hop", "proxy-authorization"):
        assert gone not in seen, gone
    assert "ig_clientgatewaykey" not in json.dumps(payload)
    assert seen["mcp-session-id"] == ["sess-42"]
    assert seen["mcp-protocol-version"] == ["2025-06-18"]
    assert seen["last-event-id"] == ["ev-7"]
    assert seen["content-type"] == ["application/json"]
    assert seen["accept"] == ["application/json, text/event-stream"]
    assert seen["accept-encoding"] == ["gzip"]
    assert seen["host"] == [f"127.0.0.1:{env.upstream.port}"]
    assert payload["path"] == "/echo/tool"
    assert payload["query"] == "a=1&b=%2F&t=hdr"
    assert payload["size"] == len(b'{"jsonrpc":"2.0","method":"ping","id":1}')


async def test_no_subpath_is_the_upstream_url_exactly(client: httpx.AsyncClient) -> None:
    """/v1/mcp/<slug> goes to upstreamUrl itself; its own query is kept before the client's."""
    exact = (await client.get("/v1/mcp/exact?x=2")).json()
    assert (exact["path"], exact["query"]) == ("/echo/exact", "fixed=1&x=2")
    slash = (await client.get("/v1/mcp/exact/")).json()
    assert slash["path"] == "/echo/exact/"


async def test_large_body_arrives_whole_through_the_peek(
    env: Env, client: httpx.AsyncClient
) -> None:
    """A 6 MB body sent after a peeked prefix reaches the upstream byte for byte."""
    body = bytes(range(256)) * (6 * 1024 * 1024 // 256)
    resp = await client.post("/v1/mcp/main/echo/big?t=big", content=body)
    assert resp.json()["sha256"] == hashlib.sha256(body).hexdigest()
    result = await env.gateway.result("big")
    assert (result.outcome, result.bytes_in) == ("ok", len(body))


async def test_request_body_is_streamed_not_buffered(env: Env, client: httpx.AsyncClient) -> None:
    """Body chunks reach the upstream while the client is still sending later ones."""
    sent: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            sent.append(time.monotonic())
            yield b"x" * 65536
            await asyncio.sleep(0.25)

    resp = await client.post("/v1/mcp/main/upload?t=stream", content=body())
    assert resp.json()["size"] == 4 * 65536
    arrivals = env.upstream.uploads["stream"]
    # The first bytes were at the upstream before the client produced its last chunk.
    assert arrivals[0][0] < sent[-1]


async def test_sse_first_event_arrives_while_upstream_open(client: httpx.AsyncClient) -> None:
    """The first SSE event reaches the client well before the upstream sends the second."""
    start = time.monotonic()
    seen = b""
    first_at = None
    async with client.stream("GET", "/v1/mcp/main/sse") as resp:
        assert resp.headers["content-type"] == "text/event-stream"
        async for chunk in resp.aiter_raw():
            seen += chunk
            if first_at is None and b"data: first" in seen:
                first_at = time.monotonic() - start
    total = time.monotonic() - start
    assert first_at is not None
    assert first_at < 0.5
    assert total >= 1.0
    assert b"data: second" in seen


@pytest.mark.parametrize("mode", ["relative", "absolute", "split"])
async def test_legacy_endpoint_event_is_rewritten(client: httpx.AsyncClient, mode: str) -> None:
    """The endpoint event points under the gateway; other events pass unchanged."""
    resp = await client.get(f"/v1/mcp/legacy/sse?mode={mode}")
    text = resp.text
    assert "event: endpoint\r\ndata: /v1/mcp/legacy/messages/?session_id=abc123\r\n\r\n" in text
    assert 'data: {"path": "/legacy/x"}' in text
    assert "127.0.0.1" not in text
    # The rewritten endpoint, posted to the gateway, lands on the upstream's messages path.
    echoed = (await client.post("/v1/mcp/legacy/messages/?session_id=abc123", content=b"{}")).json()
    assert (echoed["path"], echoed["query"]) == ("/legacy/messages/", "session_id=abc123")


async def test_gzip_passes_undecoded_and_set_cookie_is_dropped(client: httpx.AsyncClient) -> None:
    """A gzip body arrives byte for byte with true headers; Set-Cookie never reaches the client."""
    async with client.stream("GET", "/v1/mcp/main/gzip") as resp:
        raw = b"".join([c async for c in resp.aiter_raw()])
    assert resp.headers["content-encoding"] == "gzip"
    assert int(resp.headers["content-length"]) == len(raw)
    assert json.loads(gzip.decompress(raw)) == {"hello": "world" * 50}
    assert "set-cookie" not in resp.headers
    assert resp.headers["mcp-session-id"] == "sess-1"


async def test_redirect_is_relayed_not_followed(env: Env, client: httpx.AsyncClient) -> None:
    """A 302 reaches the client as is; the gateway never follows it with the credential."""
    resp = await client.get("/v1/mcp/main/redirect")
    assert resp.status_code == 302
    assert resp.headers["location"] == "/echo/moved"
    await asyncio.sleep(0.05)
    assert "/echo/moved" not in env.upstream.hits


async def test_upstream_down_is_502_without_secrets(
    env: Env, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused connection is a 502 upstream_unreachable naming no credential."""
    caplog.set_level(logging.DEBUG)
    resp = await client.post("/v1/mcp/down?t=down", content=b"{}")
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_unreachable"
    result = await env.gateway.result("down")
    assert (result.outcome, result.status) == ("upstream_error", 502)
    for text in (resp.text, caplog.text, repr(result)):
        assert SECRET not in text
        assert SECRET2 not in text


async def test_slow_headers_time_out_with_504(env: Env, client: httpx.AsyncClient) -> None:
    """No response headers within the timeout: 504 upstream_timeout, promptly."""
    start = time.monotonic()
    resp = await client.get("/v1/mcp/fast/slow-headers?t=slow")
    assert time.monotonic() - start < 1.5
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "upstream_timeout"
    assert (await env.gateway.result("slow")).outcome == "upstream_timeout"


async def test_started_stream_outlives_the_timeout(env: Env, client: httpx.AsyncClient) -> None:
    """A stream that started in time is never cut by the header timeout."""
    start = time.monotonic()
    resp = await client.get("/v1/mcp/fast/slow-stream?t=slowstream")
    assert time.monotonic() - start > 0.6
    assert resp.text.count("data: tick") == 3
    assert (await env.gateway.result("slowstream")).outcome == "ok"


async def test_upstream_break_mid_stream_ends_response(env: Env, client: httpx.AsyncClient) -> None:
    """An upstream that dies mid-stream ends the client's response; outcome upstream_error."""
    resp = await client.get("/v1/mcp/main/broken?t=broken")
    assert resp.status_code == 200
    assert "data: one" in resp.text
    result = await env.gateway.result("broken")
    assert result.outcome == "upstream_error"
    assert result.error is not None
    assert result.error.status == 502


async def test_client_disconnect_closes_upstream_within_a_second(env: Env) -> None:
    """When the client leaves an open stream, the upstream sees its connection close quickly."""
    reader, writer = await _raw(
        env.port, b"GET /v1/mcp/main/forever?t=gone HTTP/1.1\r\nHost: gw\r\n\r\n"
    )
    seen = b""
    while b"data: tick" not in seen:
        seen += await asyncio.wait_for(reader.read(4096), 5)
    left = time.monotonic()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    for _ in range(150):
        if "gone" in env.upstream.closed_at:
            break
        await asyncio.sleep(0.01)
    assert env.upstream.closed_at["gone"] - left < 1.0
    result = await env.gateway.result("gone")
    assert result.outcome == "client_closed"
    assert result.bytes_out > 0


async def test_client_leaving_before_headers_is_client_closed(env: Env) -> None:
    """A client that leaves while the upstream is still thinking ends the exchange at once."""
    _reader, writer = await _raw(
        env.port, b"GET /v1/mcp/main/slow-headers?t=early HTTP/1.1\r\nHost: gw\r\n\r\n"
    )
    await asyncio.sleep(0.2)
    left = time.monotonic()
    writer.close()
    result = await env.gateway.result("early")
    assert time.monotonic() - left < 1.0
    assert (result.outcome, result.status) == ("client_closed", 499)


async def test_head_request_relays_headers_without_body(client: httpx.AsyncClient) -> None:
    """HEAD gets the upstream's status and headers and no body."""
    resp = await client.head("/v1/mcp/main/echo/head")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.content == b""


async def test_body_without_length_header_is_forwarded(env: Env) -> None:
    """An HTTP/2-style request with a body but no Content-Length still sends its body."""
    target = Target(f"http://127.0.0.1:{env.upstream.port}", inject=(("X-Key", SECRET),))
    messages = [
        {"type": "http.request", "body": b"hello ", "more_body": True},
        {"type": "http.request", "body": b"world", "more_body": False},
    ]
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "path": "/v1/mcp/x/echo/h2",
        "raw_path": b"/v1/mcp/x/echo/h2",
        "query_string": b"",
        "headers": [(b"content-type", b"text/plain")],
    }
    async with Forwarder(timeout=5) as forwarder:
        result = await forwarder.forward(
            scope, receive, send, target, "/echo/h2", gateway_prefix="/v1/mcp/x"
        )
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 200
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert all(m["more_body"] for m in sent[1:-1])
    payload = json.loads(b"".join(m["body"] for m in sent[1:]))
    assert payload["sha256"] == hashlib.sha256(b"hello world").hexdigest()
    assert (result.outcome, result.bytes_in) == ("ok", 11)


@pytest.mark.parametrize(
    "path", ["/%2e%2e/admin", "/a/..%2F..%2Fadmin", "/%2E%2E", "//evil.example/x", "/a/%00"]
)
async def test_path_escaping_the_base_is_refused(env: Env, path: str) -> None:
    """Dot segments, plain or encoded, and empty segments get 400 and never reach the upstream."""
    hits = len(env.upstream.hits)
    reader, writer = await _raw(
        env.port,
        f"GET /v1/mcp/legacy{path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".encode(),
    )
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "bad_request"
    assert len(env.upstream.hits) == hits


# ---------------------------------------------------------------- units


async def test_read_body_prefix_stops_at_limit_and_reports_completion() -> None:
    """The prefix reader stops near the limit, reports the end, and notices a disconnect."""
    messages = [
        {"type": "http.request", "body": b"a" * 600, "more_body": True},
        {"type": "http.request", "body": b"b" * 600, "more_body": True},
        {"type": "http.request", "body": b"c", "more_body": False},
    ]

    def feeder(items: list[dict[str, Any]]) -> Any:
        it = iter(items)

        async def receive() -> dict[str, Any]:
            return next(it)

        return receive

    partial = await read_body_prefix(feeder(messages), 1000)
    assert (len(partial.data), partial.complete) == (1200, False)
    whole = await read_body_prefix(feeder(messages), 10_000)
    assert (len(whole.data), whole.complete) == (1201, True)
    gone = await read_body_prefix(feeder([{"type": "http.disconnect"}]), 10)
    assert gone == BodyPrefix(b"", complete=False, disconnected=True)


def _direct_call(path: str) -> tuple[dict[str, Any], list[str]]:
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": f"/v1/mcp/x{path}",
        "raw_path": f"/v1/mcp/x{path}".encode(),
        "query_string": b"",
        "headers": [],
    }
    return scope, []


async def test_quick_call_runs_without_a_receive_watcher(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call with its body in hand whose sized answer comes before the watch delay never
    reads receive again: no watcher task is started for it."""
    # The delay is 5 ms in production; long here so a loaded machine cannot cross it.
    monkeypatch.setattr(forward_module, "_WATCH_AFTER", 30.0)
    target = Target(f"http://127.0.0.1:{env.upstream.port}", inject=(("X-Key", SECRET),))
    scope, calls = _direct_call("/echo/quick")
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        calls.append("receive")
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with Forwarder(timeout=5) as forwarder:
        await forwarder.forward(scope, receive, send, target, "/echo/quick", gateway_prefix="/x")
        result = await forwarder.forward(
            scope, receive, send, target, "/echo/quick", gateway_prefix="/x"
        )
    assert (result.outcome, result.status) == ("ok", 200)
    assert calls == []


async def test_slow_call_is_watched_and_outside_cancellation_still_propagates(env: Env) -> None:
    """A call still waiting for headers gets a watcher (receive is read), and cancelling
    the handler from outside raises CancelledError rather than posing as client_closed."""
    target = Target(f"http://127.0.0.1:{env.upstream.port}", inject=(("X-Key", SECRET),))
    scope, calls = _direct_call("/slow-headers")

    async def receive() -> dict[str, Any]:
        calls.append("receive")
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    async with Forwarder(timeout=5) as forwarder:
        task = asyncio.ensure_future(
            forwarder.forward(scope, receive, send, target, "/slow-headers", gateway_prefix="/x")
        )
        await asyncio.sleep(0.2)
        assert calls == ["receive"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_header_deadline_and_watch_delay_leave_no_entries_behind(env: Env) -> None:
    """The sweeper's header deadline answers 504 without a timer per request, and
    neither it nor the shared watch timer keeps an exchange once its request is over."""
    target = Target(f"http://127.0.0.1:{env.upstream.port}", inject=(("X-Key", SECRET),))
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with Forwarder(timeout=0.3) as forwarder:
        scope, _ = _direct_call("/slow-headers")
        start = time.monotonic()
        slow = await forwarder.forward(
            scope, receive, send, target, "/slow-headers", gateway_prefix="/x"
        )
        assert time.monotonic() - start < 1.5
        assert (slow.outcome, slow.status) == ("upstream_timeout", 504)
        scope, _ = _direct_call("/echo/quick")
        quick = await forwarder.forward(
            scope, receive, send, target, "/echo/quick", gateway_prefix="/x"
        )
        assert (quick.outcome, quick.status) == ("ok", 200)
        assert not forwarder._waiting
        assert not forwarder._unwatched
