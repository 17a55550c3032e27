"""Access policy through the gateway (igris_mw._access with _gateway), in process
against a real aiohttp upstream on loopback, and a throwaway redis-server for
the buckets shared by two replicas."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from igris_mw import IgrisGateway
from igris_mw._access import DenialAggregator
from igris_mw._errors import ValidationError
from igris_mw.models import AuditEvent, utcnow
from igris_mw.testing import FixedKeyring, MemoryStore
from igris_mw.testing.redis_server import redis_server

TOKEN = "upstream-canary-41c7"
TOOLS = [{"name": n, "inputSchema": {"type": "object"}} for n in ("echo", "search", "delete_all")]


class Upstream:
    """Answers JSON-RPC: tools/list with TOOLS (JSON, or SSE under /sse), else a result."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if request.path.endswith("/slow"):
            await asyncio.sleep(1.0)
        messages = body if isinstance(body, list) else [body]
        answers = []
        for msg in messages:
            if not isinstance(msg, dict) or "id" not in msg:
                continue
            if msg.get("method") == "tools/list":
                answers.append({"jsonrpc": "2.0", "id": msg["id"], "result": {"tools": TOOLS}})
            else:
                answers.append({"jsonrpc": "2.0", "id": msg["id"], "result": {"ok": True}})
        payload = answers if isinstance(body, list) else (answers[0] if answers else {})
        if request.path.endswith("/sse"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(b'event: message\ndata: {"jsonrpc":"2.0","method":"note"}\n\n')
            text = json.dumps(payload)
            # Split mid-event, as a network would.
            await resp.write(f"event: message\ndata: {text[:10]}".encode())
            await resp.write(f"{text[10:]}\n\n".encode())
            await resp.write_eof()
            return resp
        return web.json_response(payload)

    def calls(self) -> list[Any]:
        out = []
        for body in self.bodies:
            for msg in body if isinstance(body, list) else [body]:
                if isinstance(msg, dict) and msg.get("method") == "tools/call":
                    out.append(msg["params"]["name"])
        return out


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", up.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url = f"http://127.0.0.1:{port}"
    yield up
    await runner.cleanup()


async def _gateway(store: MemoryStore | None = None, **options: Any) -> IgrisGateway:
    gw = IgrisGateway(
        None,
        store=store if store is not None else MemoryStore(),
        crypto=FixedKeyring("access-tests"),
        **options,
    )
    await gw.startup()
    return gw


@pytest.fixture
async def gw(upstream: Upstream) -> AsyncIterator[IgrisGateway]:
    gw = await _gateway()
    await _connection(gw, upstream, "conn-a")
    yield gw
    await gw.aclose()


async def _connection(
    gw: IgrisGateway, upstream: Upstream, slug: str, path: str = "/mcp", **more: Any
) -> None:
    await gw.service.create_connection(
        {
            "slug": slug,
            "name": slug,
            "upstreamUrl": upstream.url + path,
            "credential": TOKEN,
            **more,
        }
    )


async def _key(gw: IgrisGateway, **more: Any) -> tuple[str, str]:
    record, key = await gw.service.create_api_key({"name": "k", "scopes": ["mcp"], **more})
    return record.id, key


def _client(gw: IgrisGateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=gw), base_url="http://gw.test")


def _rpc(method: str = "ping", id_: Any = 1, **params: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params:
        msg["params"] = params
    return msg


async def _audit(gw: IgrisGateway, slug: str = "conn-a") -> list[AuditEvent]:
    assert await gw.audit.flush(5)
    page = await gw.service.list_audit(slug, limit=200)
    return [e for e in page.items if e.kind == "gateway"]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------------ rate limits


async def test_key_rate_limit_admits_one_bucket_of_100_fast_requests(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """rpm 30, burst 5: of 100 requests the upstream sees at most 6; the rest are 429."""
    _, key = await _key(gw, rateLimit={"requestsPerMinute": 30, "burst": 5})
    before = len(upstream.bodies)
    async with _client(gw) as c:
        responses = await asyncio.gather(
            *(c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth(key)) for _ in range(100))
        )
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert 5 <= len(ok) <= 6
    assert len(ok) + len(refused) == 100
    assert len(upstream.bodies) - before == len(ok)
    for r in refused:
        assert r.json()["error"]["code"] == "rate_limited"
        assert int(r.headers["retry-after"]) >= 1
    events = [e for e in await _audit(gw) if e.outcome == "rate_limited"]
    # Aggregated: the first few refusals as they come, the rest counted later.
    assert len(events) == 5
    assert all(e.count is None for e in events)
    gw._denials.flush()
    counted = [e for e in await _audit(gw) if e.outcome == "rate_limited" and e.count]
    assert len(counted) == 1
    assert counted[0].count == len(refused) - 5


async def test_denials_are_aggregated_when_the_window_closes() -> None:
    """Past the first five in a window, refusals become one event with their count."""
    emitted: list[AuditEvent] = []
    agg = DenialAggregator(emitted.append, window=0.05)
    base = AuditEvent(
        id="e",
        timestamp=utcnow(),
        connection="c",
        status=429,
        outcome="rate_limited",
        api_key_id="k",
    )
    for i in range(1000):
        agg.refused(AuditEvent(**{**_fields(base), "id": f"e{i}"}))
    assert [e.count for e in emitted] == [None] * 5
    await asyncio.sleep(0.1)
    assert [e.count for e in emitted] == [None] * 5 + [995]
    assert emitted[-1].id == "e999"
    assert len(agg) == 0


def _fields(event: AuditEvent) -> dict[str, Any]:
    import attrs

    return attrs.asdict(event, recurse=False)


async def test_aggregator_memory_is_bounded() -> None:
    """A flood over many connections and keys keeps at most max_windows open."""
    emitted: list[AuditEvent] = []
    agg = DenialAggregator(emitted.append, window=60, max_windows=10)
    for i in range(500):
        agg.refused(
            AuditEvent(
                id=f"e{i}", timestamp=utcnow(), connection=f"c{i}", status=401, outcome="denied"
            )
        )
    assert len(agg) == 10
    agg.flush()
    assert len(agg) == 0


async def test_connection_rate_limit_and_null_removes_it(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A connection's rateLimit refuses past its burst; PATCH null lifts it at once."""
    await gw.service.update_connection("conn-a", {"rateLimit": {"requestsPerMinute": 1}})
    _, key = await _key(gw)
    async with _client(gw) as c:
        assert (await c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth(key))).status_code == 200
        r = await c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth(key))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 60
        await gw.service.update_connection("conn-a", {"rateLimit": None})
        assert (await c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth(key))).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "no redis-server on PATH (scripts/test installs it)"
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        with redis_server(binary) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


async def test_two_replicas_sharing_redis_admit_one_bucket(
    upstream: Upstream, redis_url: str
) -> None:
    """Two gateways on one store and one Redis: together they admit one bucket's worth."""
    store = MemoryStore()
    a = await _gateway(store, rate_limit_store=redis_url)
    b = await _gateway(store, rate_limit_store=redis_url)
    try:
        await _connection(a, upstream, "shared-rl")
        _, warm = await _key(a, rateLimit={"requestsPerMinute": 1000})
        _, key = await _key(a, rateLimit={"requestsPerMinute": 30, "burst": 5})
        async with _client(a) as ca, _client(b) as cb:
            # Connect both to Redis (and load the script) before the clock matters.
            for c in (ca, cb):
                r = await c.post("/v1/mcp/shared-rl", json=_rpc(), headers=_auth(warm))
                assert r.status_code == 200
            before = len(upstream.bodies)
            gate = asyncio.Semaphore(10)  # as fast as ten clients can go

            async def one(i: int) -> httpx.Response:
                async with gate:
                    return await (ca if i % 2 else cb).post(
                        "/v1/mcp/shared-rl", json=_rpc(), headers=_auth(key)
                    )

            responses = await asyncio.gather(*(one(i) for i in range(100)))
        ok = sum(r.status_code == 200 for r in responses)
        assert 5 <= ok <= 6
        assert len(upstream.bodies) - before == ok
        assert all(r.status_code in (200, 429) for r in responses)
    finally:
        await a.aclose()
        await b.aclose()


async def test_failed_authentications_throttle_the_address(upstream: Upstream) -> None:
    """Past N failed authentications a minute, the address gets 429 (even with a good key)."""
    gw = await _gateway(auth_failures_per_minute=5)
    try:
        await _connection(gw, upstream, "conn-a")
        _, good = await _key(gw)
        async with _client(gw) as c:
            for _ in range(4):
                r = await c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth("ig_bad"))
                assert r.status_code == 401
            r = await c.post("/v1/mcp/conn-a", json=_rpc())  # the fifth: still answered
            assert r.status_code == 401
            r = await c.post("/v1/mcp/conn-a", json=_rpc())  # more than five: blocked
            assert r.status_code == 429
            assert r.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            r = await c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth(good))
            assert r.status_code == 429
        events = await _audit(gw)
        denied = [e for e in events if e.status == 401]
        assert len(denied) == 5  # each of the first few as it came
        throttled = [e for e in events if e.status == 429]
        assert len(throttled) == 2
    finally:
        await gw.aclose()


async def test_max_concurrent_caps_open_requests(gw: IgrisGateway, upstream: Upstream) -> None:
    """maxConcurrent 2: a third request while two are open is 429 too_many_concurrent."""
    await _connection(gw, upstream, "slowpoke", path="/slow")
    _, key = await _key(gw, maxConcurrent=2)
    async with _client(gw) as c:
        first = [
            asyncio.ensure_future(c.post("/v1/mcp/slowpoke", json=_rpc(), headers=_auth(key)))
            for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        r = await c.post("/v1/mcp/slowpoke", json=_rpc(), headers=_auth(key))
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "too_many_concurrent"
        assert r.headers["retry-after"] == "1"
        assert [f.status_code for f in await asyncio.gather(*first)] == [200, 200]
        r = await c.post("/v1/mcp/slowpoke", json=_rpc(), headers=_auth(key))
        assert r.status_code == 200


# ------------------------------------------------------------------ tool policy


async def test_denied_tool_call_is_answered_by_the_gateway(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A denied tools/call: HTTP 200, JSON-RPC -32003 with the same id, nothing upstream."""
    await gw.service.update_connection("conn-a", {"tools": {"deny": ["delete_*"]}})
    _, key = await _key(gw)
    calls = len(upstream.calls())
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/conn-a",
            json=_rpc("tools/call", "call-7", name="delete_all"),
            headers=_auth(key),
        )
        assert r.status_code == 200
        assert r.json() == {
            "jsonrpc": "2.0",
            "id": "call-7",
            "error": {"code": -32003, "message": "tool delete_all is not allowed"},
        }
        ok = await c.post(
            "/v1/mcp/conn-a", json=_rpc("tools/call", 8, name="echo"), headers=_auth(key)
        )
        assert ok.json()["result"] == {"ok": True}
    assert upstream.calls()[calls:] == ["echo"]
    events = await _audit(gw)
    denied = [e for e in events if e.outcome == "tool_denied"]
    assert len(denied) == 1
    assert denied[0].tool == "delete_all"
    assert denied[0].status == 200


async def test_key_and_connection_policies_both_apply(gw: IgrisGateway, upstream: Upstream) -> None:
    """The key's allow list narrows the connection's: a tool must pass both."""
    await gw.service.update_connection("conn-a", {"tools": {"deny": ["delete_*"]}})
    _, key = await _key(gw, tools={"allow": ["echo"]})
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/conn-a", json=_rpc("tools/call", 1, name="search"), headers=_auth(key)
        )
        assert r.json()["error"]["code"] == -32003
        r = await c.post("/v1/mcp/conn-a", json=_rpc("tools/list", 2), headers=_auth(key))
        assert [t["name"] for t in r.json()["result"]["tools"]] == ["echo"]


@pytest.mark.parametrize("path", ["/mcp", "/sse"], ids=["json", "sse"])
async def test_tools_list_is_filtered(gw: IgrisGateway, upstream: Upstream, path: str) -> None:
    """tools/list answers (JSON or SSE, split across chunks) lose the disallowed tools."""
    await _connection(gw, upstream, "listed", path=path, tools={"allow": ["echo", "search"]})
    _, key = await _key(gw)
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/listed",
            json=_rpc("tools/list", 5),
            headers={**_auth(key), "Accept-Encoding": "gzip"},
        )
    assert r.status_code == 200
    assert "content-encoding" not in r.headers
    assert "accept-encoding" not in {k.lower() for k in upstream.headers[-1]}
    if path == "/sse":
        events = [e for e in r.text.split("\n\n") if e.strip()]
        assert '"method": "note"' in events[0] or '"method":"note"' in events[0]
        answer = json.loads(events[1].split("data: ", 1)[1])
    else:
        answer = r.json()
    assert answer["id"] == 5
    assert [t["name"] for t in answer["result"]["tools"]] == ["echo", "search"]


async def test_batch_with_a_denied_call_is_answered_whole(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A batch holding a denied call: every request answered by the gateway, nothing sent."""
    await gw.service.update_connection("conn-a", {"tools": {"allow": ["echo"]}})
    _, key = await _key(gw)
    sent = len(upstream.bodies)
    batch = [_rpc("tools/call", 1, name="echo"), _rpc("tools/call", 2, name="search")]
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/conn-a", json=batch, headers=_auth(key))
    assert r.status_code == 200
    answers = {a["id"]: a for a in r.json()}
    assert answers[2]["error"] == {"code": -32003, "message": "tool search is not allowed"}
    assert answers[1]["error"]["code"] == -32003
    assert len(upstream.bodies) == sent
    allowed = [_rpc("tools/call", 3, name="echo"), _rpc("tools/list", 4)]
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/conn-a", json=allowed, headers=_auth(key))
    answers = {a["id"]: a for a in r.json()}
    assert [t["name"] for t in answers[4]["result"]["tools"]] == ["echo"]


async def test_mcp_headers_must_agree_with_the_body(gw: IgrisGateway, upstream: Upstream) -> None:
    """Mcp-Method / Mcp-Name that contradict the body: 400 header_mismatch, nothing sent."""
    _, key = await _key(gw)
    sent = len(upstream.bodies)
    body = _rpc("tools/call", 1, name="echo")
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/conn-a", json=body, headers={**_auth(key), "Mcp-Method": "tools/list"}
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "header_mismatch"
        r = await c.post(
            "/v1/mcp/conn-a",
            json=body,
            headers={**_auth(key), "Mcp-Method": "tools/call", "Mcp-Name": "other"},
        )
        assert r.status_code == 400
        assert len(upstream.bodies) == sent
        r = await c.post(
            "/v1/mcp/conn-a",
            json=body,
            headers={**_auth(key), "Mcp-Method": "tools/call", "Mcp-Name": "echo"},
        )
        assert r.status_code == 200


async def test_no_policy_responses_are_not_parsed(gw: IgrisGateway, upstream: Upstream) -> None:
    """Without a tool policy a tools/list answer passes byte for byte (Content-Length kept)."""
    _, key = await _key(gw)
    async with _client(gw) as c:
        r = await c.post("/v1/mcp/conn-a", json=_rpc("tools/list", 1), headers=_auth(key))
    assert [t["name"] for t in r.json()["result"]["tools"]] == [t["name"] for t in TOOLS]
    assert r.headers["content-length"] == str(len(r.content))


# ------------------------------------------------------------------ grants and validation


async def test_grant_does_not_pass_to_a_new_connection_of_the_same_slug(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """A key limited to a slug loses it on delete; a new connection of that slug is not its."""
    await _connection(gw, upstream, "github")
    _, key = await _key(gw, connections=["github", "conn-a"])
    async with _client(gw) as c:
        assert (await c.post("/v1/mcp/github", json=_rpc(), headers=_auth(key))).status_code == 200
        await gw.service.delete_connection("github")
        await _connection(gw, upstream, "github")
        r = await c.post("/v1/mcp/github", json=_rpc(), headers=_auth(key))
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "connection_not_allowed"
        assert (await c.post("/v1/mcp/conn-a", json=_rpc(), headers=_auth(key))).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rateLimit": {"requestsPerMinute": 0}}, "rateLimit"),
        ({"rateLimit": {"requestsPerMinute": 10, "burst": "5"}}, "rateLimit"),
        ({"rateLimit": {"rpm": 10}}, "rateLimit"),
        ({"rateLimit": [10]}, "rateLimit"),
        ({"tools": {"allow": "echo"}}, "tools"),
        ({"tools": {"allow": [""]}}, "tools"),
        ({"tools": {"only": ["x"]}}, "tools"),
        ({"maxConcurrent": 0}, "maxConcurrent"),
        ({"maxConcurrent": True}, "maxConcurrent"),
        ({"maxConcurrent": 1.5}, "maxConcurrent"),
        ({"expiresAt": "2000-01-01T00:00:00Z"}, "expiresAt"),
        ({"connections": []}, "connections"),
        ({"name": ""}, "name"),
        ({"scopes": ["admin"]}, "scopes"),
        ({"revokedAt": None}, "revokedAt"),
    ],
)
async def test_patch_api_key_validation_is_422_naming_the_field(
    gw: IgrisGateway, body: dict[str, Any], field: str
) -> None:
    """PATCH /api/v1/api-keys/{id} with a bad field: 422 naming it, the key unchanged."""
    _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    key_id, _ = await _key(gw, rateLimit={"requestsPerMinute": 10})
    before = [k.to_json() for k in await gw.service.list_api_keys()]
    async with _client(gw) as c:
        r = await c.patch(f"/api/v1/api-keys/{key_id}", json=body, headers=_auth(admin))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    assert r.json()["error"]["field"] == field
    assert [k.to_json() for k in await gw.service.list_api_keys()] == before


async def test_patch_api_key_changes_policy_and_takes_effect(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """PATCH sets rateLimit, tools, maxConcurrent, name; the next request obeys it."""
    _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
    key_id, key = await _key(gw)
    async with _client(gw) as c:
        r = await c.patch(
            f"/api/v1/api-keys/{key_id}",
            json={
                "name": "renamed",
                "tools": {"deny": ["echo"]},
                "maxConcurrent": 3,
                "rateLimit": {"requestsPerMinute": 60, "burst": 2},
            },
            headers=_auth(admin),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "renamed"
        assert body["tools"] == {"allow": [], "deny": ["echo"]}
        assert body["rateLimit"] == {"requestsPerMinute": 60, "burst": 2}
        assert body["maxConcurrent"] == 3
        assert "key" not in body
        r = await c.post(
            "/v1/mcp/conn-a", json=_rpc("tools/call", 1, name="echo"), headers=_auth(key)
        )
        assert r.json()["error"]["code"] == -32003
        r = await c.patch("/api/v1/api-keys/nope", json={"name": "x"}, headers=_auth(admin))
        assert r.status_code == 404
        r = await c.patch(
            f"/api/v1/api-keys/{key_id}", json={"rateLimit": None}, headers=_auth(admin)
        )
        assert r.json()["rateLimit"] is None


async def test_connection_policy_validation_is_422(gw: IgrisGateway) -> None:
    """A bad rateLimit or tools on a connection create or PATCH: 422 naming it, nothing stored."""
    with pytest.raises(ValidationError) as caught:
        await gw.service.update_connection("conn-a", {"tools": {"deny": [1]}})
    assert caught.value.field == "tools"
    assert (await gw.service.get_connection("conn-a")).tools is None
    with pytest.raises(ValidationError) as caught:
        await gw.service.create_connection(
            {
                "slug": "bad-rl",
                "name": "x",
                "upstreamUrl": "http://127.0.0.1:1/mcp",
                "credential": "c",
                "rateLimit": {"requestsPerMinute": -1},
            }
        )
    assert caught.value.field == "rateLimit"
    assert "bad-rl" not in [c.slug for c in (await gw.service.list_connections()).items]


# ------------------------------------------------------------------ the fast path

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from igris_mw._access import plainly_allowed  # noqa: E402
from igris_mw._audit import peek_jsonrpc  # noqa: E402
from igris_mw._policy.tools import ToolPolicy, check_request, combine  # noqa: E402

_POLICY = ToolPolicy(allow=("echo", "search*"), deny=("search_admin",))
_CHECK = combine(_POLICY)
assert _CHECK is not None


def _fast(body: bytes) -> bool:
    method, tool = peek_jsonrpc(body, complete=True)
    return plainly_allowed(body, method, tool, _POLICY, None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_admin"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"rm"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ech\\u006f"}}',
        b'{"id":1,"method":"ping","method":"tools/call","params":{"name":"rm"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
        b'[{"id":1,"method":"ping"},{"id":2,"method":"tools/call","params":{"name":"rm"}}]',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search'
        + b"x" * 300
        + b'"}}',
        b"not json",
    ],
)
def test_fast_path_declines_what_it_cannot_vouch_for(body: bytes) -> None:
    """Denied calls, duplicates, escapes, tools/list, batches, long names: the full check."""
    assert not _fast(body)


def test_fast_path_takes_plain_allowed_requests() -> None:
    """A plain allowed tools/call or another single method skips the second parse."""
    assert _fast(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}')
    assert _fast(b'{"jsonrpc":"2.0","id":1,"method":"ping"}')


_NAMES = st.sampled_from(["echo", "search", "search_admin", "rm", "name", "ech\\u006f", ""])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tools/call", "tools/list", "ping", "method", "name"]),
            st.lists(_NAMES, min_size=0, max_size=2),
        ),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
)
def test_fast_path_never_passes_what_the_full_check_refuses(
    messages: list[tuple[str, list[str]]], batch: bool
) -> None:
    """Whenever the fast path lets a body through, check_request denies no tool in it
    and filters no answer (it may still refuse duplicate members in a non-tool request)."""
    parts = []
    for i, (method, names) in enumerate(messages):
        params = ",".join(f'"name":"{n}"' for n in names)
        parts.append(f'{{"jsonrpc":"2.0","id":{i},"method":"{method}","params":{{{params}}}}}')
    text = ("[" + ",".join(parts) + "]") if batch or len(parts) > 1 else parts[0]
    body = text.encode()
    if _fast(body):
        verdict = check_request(body, _CHECK)  # type: ignore[arg-type]
        assert not verdict.denied
        assert not verdict.list_ids
        if verdict.reply is not None:
            assert messages[0][0] != "tools/call"


async def test_large_bodies_under_a_policy_and_with_mcp_headers(
    gw: IgrisGateway, upstream: Upstream
) -> None:
    """Under a tool policy a body up to 1 MiB is judged whole (beyond: 413); without one,
    a body too long to parse is checked on Mcp-Method only and goes through."""
    await _connection(gw, upstream, "big-pol", tools={"deny": ["rm"]})
    _, key = await _key(gw)
    big = "x" * (200 * 1024)
    async with _client(gw) as c:
        r = await c.post(
            "/v1/mcp/big-pol", json=_rpc("tools/call", 1, name="rm", pad=big), headers=_auth(key)
        )
        assert r.json()["error"]["code"] == -32003
        r = await c.post(
            "/v1/mcp/big-pol", json=_rpc("tools/call", 2, name="echo", pad=big), headers=_auth(key)
        )
        assert r.json()["result"] == {"ok": True}
        huge = "x" * (1100 * 1024)
        r = await c.post(
            "/v1/mcp/big-pol", json=_rpc("tools/call", 3, name="echo", pad=huge), headers=_auth(key)
        )
        assert r.status_code == 413
        headers = {**_auth(key), "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
        r = await c.post(
            "/v1/mcp/conn-a", json=_rpc("tools/call", 4, name="echo", pad=huge), headers=headers
        )
        assert r.status_code == 200
        r = await c.post(
            "/v1/mcp/conn-a",
            json=_rpc("tools/call", 5, name="echo", pad=huge),
            headers={**headers, "Mcp-Method": "tools/list"},
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "header_mismatch"


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["name", "connections", "expiresAt", "rateLimit", "tools", "maxConcurrent", "x\x00"]
        ),
        _JSON,
        max_size=4,
    )
)
async def test_patch_api_key_with_any_json_is_200_or_422_and_422_changes_nothing(
    body: dict[str, Any],
) -> None:
    """Any JSON value in any PATCH field: a clean 200 or a 422 naming a field, no 500,
    and a refused PATCH leaves the key as it was."""
    gw = await _gateway()
    try:
        _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
        key_id, _ = await _key(gw)
        before = [k.to_json() for k in await gw.service.list_api_keys()]
        async with _client(gw) as c:
            r = await c.patch(f"/api/v1/api-keys/{key_id}", json=body, headers=_auth(admin))
        assert r.status_code in (200, 422), r.text
        if r.status_code == 422:
            assert r.json()["error"]["field"]
            assert [k.to_json() for k in await gw.service.list_api_keys()] == before
    finally:
        await gw.aclose()


@given(st.text(max_size=300) | st.binary(max_size=50).map(lambda b: b.decode("latin-1")))
async def test_any_tool_name_under_deny_all_is_answered_and_never_sent(name: str) -> None:
    """Whatever the tool name (NUL, lone surrogates, escapes, long): a denied call is a
    JSON-RPC -32003 answer or a 400, never a 500, and nothing reaches the upstream."""
    gw = await _gateway()
    try:
        await gw.service.create_connection(
            {"slug": "deny-all", "name": "d", "upstreamUrl": "http://127.0.0.1:9/mcp",
             "credential": "c", "tools": {"deny": ["*"]}}
        )  # fmt: skip
        _, key = await _key(gw)
        body = json.dumps(_rpc("tools/call", 1, name=name)).encode()
        async with _client(gw) as c:
            r = await c.post(
                "/v1/mcp/deny-all", content=body,
                headers={**_auth(key), "Content-Type": "application/json"},
            )  # fmt: skip
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json()["error"]["code"] == -32003
    finally:
        await gw.aclose()
