"""Tests for igris_mw._gateway.IgrisGateway, in process (httpx.ASGITransport)
against a real aiohttp upstream on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from igris_mw import IgrisGateway
from igris_mw._policy.egress import EgressPolicy
from igris_mw.testing import FixedKeyring, MemoryStore

UPSTREAM_TOKEN = "upstream-canary-7f3a9c"


class Upstream:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            {"headers": dict(request.headers), "body": body, "path": request.path_qs}
        )
        if request.path.endswith("/slow"):
            await asyncio.sleep(2)
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {"ok": True}})


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


class CountingStore(MemoryStore):
    """A MemoryStore that counts every read the gateway makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_connection(self, slug: str) -> Any:
        self.reads += 1
        return await super().get_connection(slug)

    async def get_api_key_by_hash(self, key_hash: bytes) -> Any:
        self.reads += 1
        return await super().get_api_key_by_hash(key_hash)


class CountingKeyring(FixedKeyring):
    """A keyring that counts unwraps (decryptions)."""

    __slots__ = ("unwraps",)

    def __init__(self) -> None:
        super().__init__("gateway-tests")
        self.unwraps = 0

    def decrypt_sync(self, envelope: bytes, associated_data: bytes) -> bytes:
        self.unwraps += 1
        return super().decrypt_sync(envelope, associated_data)


@pytest.fixture
async def gateway(upstream: Upstream) -> AsyncIterator[tuple[IgrisGateway, str]]:
    gw = IgrisGateway(
        None,
        store=CountingStore(),
        crypto=CountingKeyring(),
        allowed_origins=["https://ok.example"],
    )
    await gw.startup()
    _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    await gw.service.create_connection(
        {
            "slug": "conn-a",
            "name": "A",
            "upstreamUrl": upstream.url + "/mcp",
            "credential": UPSTREAM_TOKEN,
        }
    )
    yield gw, admin
    await gw.aclose()


def _client(gw: IgrisGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://gw.test")


RPC = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {}},
}


async def _audit(gw: IgrisGateway, slug: str = "conn-a") -> list[dict[str, Any]]:
    assert await gw.audit.flush(5)
    page = await gw.service.list_audit(slug, limit=200)
    return [e.to_json() for e in page.items if e.kind == "gateway"]


async def test_proxies_with_injected_credential_and_strips_gateway_headers(
    gateway: tuple[IgrisGateway, str], upstream: Upstream
) -> None:
    """The upstream sees the injected credential, never the ig_ key or X-Igris-* headers."""
    gw, admin = gateway
    upstream.requests.clear()
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/conn-a?x=1",
            json=RPC,
            headers={
                "Authorization": f"Bearer {admin}",
                "X-Igris-User": "alice@example.com",
                "X-Igris-Metadata": '{"role": "dev"}',
            },
        )
    assert r.status_code == 200, r.text
    seen = upstream.requests[-1]
    assert seen["headers"]["Authorization"] == f"Bearer {UPSTREAM_TOKEN}"
    assert seen["path"] == "/mcp?x=1"
    assert not any(k.lower().startswith("x-igris-") for k in seen["headers"])
    assert admin not in json.dumps(seen["headers"])
    events = await _audit(gw)
    assert events[0]["rpcMethod"] == "tools/call"
    assert events[0]["tool"] == "echo"
    assert events[0]["user"] == "alice@example.com"
    assert events[0]["metadata"] == {"role": "dev"}
    assert events[0]["outcome"] == "ok"
    assert events[0]["status"] == 200


async def test_decoy_method_in_a_body_over_the_peek_is_not_recorded(
    gateway: tuple[IgrisGateway, str], upstream: Upstream
) -> None:
    """A body over the peek limit with a decoy "method" early on is audited with rpcMethod null."""
    gw, admin = gateway
    decoy = '{"jsonrpc":"2.0","id":1,"params":{"x":{"method":"tools/list"},"name":"echo"},'
    body = decoy + '"pad":"' + "a" * 70_000 + '","method":"tools/call"}'
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/conn-a",
            content=body.encode(),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        )
    assert r.status_code == 200, r.text
    event = (await _audit(gw))[0]
    assert event["rpcMethod"] is None
    assert event["tool"] is None
    assert event["bytesIn"] == len(body)


async def test_warm_path_reads_no_store_and_unwraps_no_key(
    gateway: tuple[IgrisGateway, str], upstream: Upstream
) -> None:
    """Once warm, 100 proxied requests make zero store reads and zero key unwraps."""
    gw, admin = gateway
    store = gw.store
    crypto = gw.crypto
    assert isinstance(store, CountingStore)
    assert isinstance(crypto, CountingKeyring)
    async with _client(gw) as c:
        headers = {"Authorization": f"Bearer {admin}"}
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
        assert r.status_code == 200
        reads, unwraps = store.reads, crypto.unwraps
        for _ in range(100):
            r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
            assert r.status_code == 200
    assert store.reads == reads
    assert crypto.unwraps == unwraps
    assert len(await _audit(gw)) == 101


async def test_rotate_disable_revoke_take_effect_on_the_next_request(
    gateway: tuple[IgrisGateway, str], upstream: Upstream
) -> None:
    """Changes through the service invalidate the caches at once."""
    gw, _ = gateway
    _, mcp_key = await gw.service.create_api_key({"name": "m", "scopes": ["mcp"]})
    headers = {"Authorization": f"Bearer {mcp_key}"}
    async with _client(gw) as c:
        assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)).status_code == 200
        await gw.service.rotate_credential("conn-a", "new-token-1")
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
        assert upstream.requests[-1]["headers"]["Authorization"] == "Bearer new-token-1"
        # The upstream refuses the new token (so it was sent): a 502 upstream_auth_failed.
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "upstream_auth_failed"
        await gw.service.rotate_credential("conn-a", UPSTREAM_TOKEN)
        await gw.service.set_enabled("conn-a", False)
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "connection_disabled"
        await gw.service.set_enabled("conn-a", True)
        assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)).status_code == 200
        keys = {k.name: k for k in await gw.service.list_api_keys()}
        await gw.service.revoke_api_key(keys["m"].id)
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
        assert r.status_code == 401
    outcomes = [e["outcome"] for e in await _audit(gw)]
    assert outcomes.count("denied") == 2


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer ig_notavalidkey"}, 401, "unauthorized"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, 401, "unauthorized"),
        ({"Origin": "https://evil.example"}, 403, "origin_not_allowed"),
        ({"X-Igris-Metadata": "[1, 2]"}, 400, "bad_request"),
        ({"X-Igris-Metadata": "{not json"}, 400, "bad_request"),
        ({"X-Igris-Metadata": "[" * 2000 + "]" * 2000}, 400, "bad_request"),
        ({"X-Igris-Metadata": "{}" + " " * 5000}, 400, "bad_request"),
    ],
)
async def test_refusals_are_json_errors(
    gateway: tuple[IgrisGateway, str], headers: dict[str, str], status: int, code: str
) -> None:
    """Each refusal has the contract's status and a JSON error body."""
    gw, admin = gateway
    if "Authorization" not in headers and status != 401:
        headers = {**headers, "Authorization": f"Bearer {admin}"}
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


async def test_allowed_and_same_origin_pass(gateway: tuple[IgrisGateway, str]) -> None:
    """An allow-listed Origin and a same-origin request are served."""
    gw, admin = gateway
    async with _client(gw) as c:
        for origin in ("https://ok.example", "http://gw.test"):
            r = await c.post(
                "/v1/mcp/conn-a",
                json=RPC,
                headers={"Authorization": f"Bearer {admin}", "Origin": origin},
            )
            assert r.status_code == 200, origin


async def test_key_limited_to_other_connections_is_refused(
    gateway: tuple[IgrisGateway, str],
) -> None:
    """An mcp key limited to other connections gets 403, audited as denied."""
    gw, _ = gateway
    _, key = await gw.service.create_api_key(
        {"name": "limited", "scopes": ["mcp"], "connections": ["conn-b"]}
    )
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 403
    events = await _audit(gw)
    assert events[0]["outcome"] == "denied"
    assert events[0]["status"] == 403


async def test_unknown_connection_is_404_without_a_trail(gateway: tuple[IgrisGateway, str]) -> None:
    """An unknown slug is 404 and creates no audit trail for it."""
    gw, admin = gateway
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/nope-nope", json=RPC, headers={"Authorization": f"Bearer {admin}"}
        )
        r2 = await c.post("/v1/mcp/Bad!", json=RPC, headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 404
    assert r2.status_code == 404
    assert await gw.audit.flush(5)
    assert "nope-nope" not in await gw.store.audit_connections()


async def test_other_routes_pass_through_to_the_wrapped_app() -> None:
    """Paths outside the gateway's go to the wrapped app untouched."""
    calls = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})

    gw = IgrisGateway(app, store=MemoryStore(), crypto=FixedKeyring())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://t") as c:
        r = await c.get("/hello")
        r2 = await c.get("/healthz")
    assert r.text == "inner"
    assert r2.text == "inner"  # no health route when wrapping an app
    assert calls == ["/hello", "/healthz"]
    await gw.aclose()


async def test_lifespan_runs_ours_and_the_wrapped_apps() -> None:
    """With a wrapped app that has a lifespan, both start and stop."""
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                events.append("app-start")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                events.append("app-stop")
                await send({"type": "lifespan.shutdown.complete"})
                return

    gw = IgrisGateway(app, store=MemoryStore(), crypto=FixedKeyring())
    sent: list[str] = []
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def send(message: Any) -> None:
        sent.append(message["type"])

    task = asyncio.create_task(gw({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.sleep(0.05)
    assert gw._started
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    assert events == ["app-start", "app-stop"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not gw._started


async def test_lifespan_when_the_wrapped_app_has_none() -> None:
    """A wrapped app that rejects lifespan does not stop the gateway's own."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")

    gw = IgrisGateway(app, store=MemoryStore(), crypto=FixedKeyring())
    sent: list[str] = []
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def send(message: Any) -> None:
        sent.append(message["type"])

    task = asyncio.create_task(gw({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.sleep(0.05)
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_no_secret_in_logs(
    gateway: tuple[IgrisGateway, str], caplog: pytest.LogCaptureFixture
) -> None:
    """At DEBUG, no log line holds the upstream credential or the ig_ key."""
    gw, admin = gateway
    caplog.set_level(logging.DEBUG)
    async with _client(gw) as c:
        await c.post("/v1/mcp/conn-a", json=RPC, headers={"Authorization": f"Bearer {admin}"})
        await c.post("/v1/mcp/conn-a", json=RPC, headers={"Authorization": f"Bearer {admin}x"})
    await gw.service.rotate_credential("conn-a", UPSTREAM_TOKEN)
    text = caplog.text + repr(gw) + repr(gw._conns._entries)
    assert UPSTREAM_TOKEN not in text
    assert admin not in text


async def test_store_down_at_first_request_is_a_503() -> None:
    """Lazy start-up that cannot reach the store answers 503 JSON with Retry-After, not a crash."""

    class DownStore(MemoryStore):
        async def open(self) -> None:
            from igris_mw import StoreUnavailable

            raise StoreUnavailable("postgres unreachable at postgresql://u:***@db/x")

    gw = IgrisGateway(None, store=DownStore(), crypto=FixedKeyring())
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/conn-a", json=RPC, headers={"Authorization": "Bearer x"})
        r2 = await c.get("/api/v1/virtual-keys")
    for resp in (r, r2):
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "store_unavailable"
        assert int(resp.headers["retry-after"]) > 0


async def test_unnotified_change_is_honoured_within_the_cache_ttl(
    tmp_path: Any, upstream: Upstream
) -> None:
    """A disable written by another process (no notification) is honoured after cache_ttl."""
    from igris_mw._service import Service
    from igris_mw._sqlite import SQLiteStore

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    gw = IgrisGateway(None, store=url, crypto=FixedKeyring(), cache_ttl=0.2)
    await gw.startup()
    other = SQLiteStore.from_url(url)  # e.g. the CLI, in another process
    await other.open()
    try:
        _, key = await gw.service.create_api_key({"name": "m", "scopes": ["mcp"]})
        await gw.service.create_connection(
            {
                "slug": "conn-a",
                "name": "A",
                "upstreamUrl": upstream.url,
                "credential": UPSTREAM_TOKEN,
            }
        )
        headers = {"Authorization": f"Bearer {key}"}
        async with _client(gw) as c:
            assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)).status_code == 200
            await Service(other, FixedKeyring()).set_enabled("conn-a", False)
            # Within the TTL the cached (enabled) entry may still be served ...
            assert (await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)).status_code == 200
            await asyncio.sleep(0.3)
            # ... past it, the first request triggers a background revalidation,
            # and the change is honoured one store round trip later.
            await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
            await asyncio.sleep(0.1)
            r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "connection_disabled"
    finally:
        await other.close()
        await gw.aclose()


async def test_upstream_timeout_is_a_504_and_audited(upstream: Upstream) -> None:
    """No response headers within upstream_timeout: 504 JSON, audit outcome upstream_timeout."""
    gw = IgrisGateway(
        None,
        store=MemoryStore(),
        crypto=FixedKeyring(),
        environ={"IGRIS_UPSTREAM_TIMEOUT": "0.3", "IGRIS_ALLOW_UPSTREAM_NETWORKS": "127.0.0.0/8"},
    )
    await gw.startup()
    try:
        _, key = await gw.service.create_api_key({"name": "m", "scopes": ["mcp"]})
        await gw.service.create_connection(
            {
                "slug": "conn-a",
                "name": "A",
                "upstreamUrl": upstream.url,
                "credential": UPSTREAM_TOKEN,
            }
        )
        async with _client(gw) as c:
            started = asyncio.get_running_loop().time()
            r = await c.post(
                "/v1/mcp/conn-a/slow", json=RPC, headers={"Authorization": f"Bearer {key}"}
            )
            elapsed = asyncio.get_running_loop().time() - started
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "upstream_timeout"
        assert UPSTREAM_TOKEN not in r.text
        assert elapsed < 1.5
        events = await _audit(gw)
        assert events[0]["outcome"] == "upstream_timeout"
        assert events[0]["status"] == 504
    finally:
        await gw.aclose()


@pytest.mark.parametrize("gateway_keys", [("other",), ("other", "another")])
async def test_undecryptable_credential_is_a_503_and_nothing_goes_upstream(
    upstream: Upstream, caplog: pytest.LogCaptureFixture, gateway_keys: tuple[str, ...]
) -> None:
    """A credential sealed under a master key the gateway lacks: 503 crypto_unavailable
    with Retry-After, no upstream request, and the missing key id (no key material) logged."""
    import base64

    from igris_mw._service import Service

    store = MemoryStore()
    gw = IgrisGateway(None, store=store, crypto=FixedKeyring(*gateway_keys))
    await gw.startup()
    try:
        sealed_with = FixedKeyring("written-elsewhere")
        await Service(
            store, sealed_with, egress=EgressPolicy.from_setting("127.0.0.0/8")
        ).create_connection(
            {
                "slug": "conn-a",
                "name": "A",
                "upstreamUrl": upstream.url + "/mcp",
                "credential": UPSTREAM_TOKEN,
            }
        )
        _, key = await gw.service.create_api_key({"name": "m", "scopes": ["mcp"]})
        caplog.set_level(logging.DEBUG)
        upstream.requests.clear()
        headers = {"Authorization": f"Bearer {key}"}
        async with _client(gw) as c:
            for _ in range(2):
                r = await c.post("/v1/mcp/conn-a", json=RPC, headers=headers)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "crypto_unavailable"
                assert int(r.headers["retry-after"]) > 0
        assert upstream.requests == []
        assert sealed_with.primary_key_id in caplog.text
        material = [FixedKeyring.key_for(n) for n in ("written-elsewhere", *gateway_keys)]
        for raw in material:
            for shown in (raw.hex(), base64.b64encode(raw).decode(), repr(raw)):
                assert shown not in caplog.text
        assert UPSTREAM_TOKEN not in caplog.text + r.text
        events = await _audit(gw)
        assert [e["outcome"] for e in events] == ["crypto_unavailable"] * 2
        assert all(e["status"] == 503 for e in events)
    finally:
        await gw.aclose()


async def _run_lifespan(gw: IgrisGateway) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def send(message: Any) -> None:
        sent.append(dict(message))

    task = asyncio.create_task(gw({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    await asyncio.sleep(0.05)
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, 5)
    return sent


async def test_standalone_lifespan_starts_and_stops_the_gateway() -> None:
    """Standalone, the gateway alone speaks the lifespan protocol and closes on shutdown."""
    gw = IgrisGateway(None, store=MemoryStore(), crypto=FixedKeyring())
    sent = await _run_lifespan(gw)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not gw._started


@pytest.mark.parametrize("wrapped", [False, True])
async def test_lifespan_start_failure_is_reported(wrapped: bool) -> None:
    """A store that cannot open: lifespan.startup.failed with the store's own message."""

    class DownStore(MemoryStore):
        async def open(self) -> None:
            from igris_mw import StoreUnavailable

            raise StoreUnavailable("postgres unreachable at postgresql://u:***@db/x")

    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no lifespan here")

    gw = IgrisGateway(no_lifespan if wrapped else None, store=DownStore(), crypto=FixedKeyring())
    sent: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await inbox.put({"type": "lifespan.startup"})
    await asyncio.wait_for(gw({"type": "lifespan"}, inbox.get, send), 5)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert "postgres unreachable" in sent[0]["message"]
    assert not gw._started
