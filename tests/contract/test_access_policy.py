"""Contract, second part: access policy (rate limits, tool policy, maxConcurrent) and revocation."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from contract_harness import ScriptedUpstream, Served, error_of, serve
from e2e_harness import streamable_session
from mcp.shared.exceptions import MCPError
from upstream import UpstreamServer

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}


def _events(gw: Served, slug: str, want: str, n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        data = gw.api("GET", f"/api/v1/virtual-keys/{slug}/audit", params={"limit": 200}).json()[
            "data"
        ]
        hits = [e for e in data if e.get("outcome") == want]
        if len(hits) >= n or time.monotonic() > deadline:
            return hits
        time.sleep(0.1)


def _rate_limited(r: httpx.Response) -> None:
    error_of(r, 429, "rate_limited")
    retry = r.headers["retry-after"]
    assert retry.isdigit(), retry
    assert int(retry) >= 1, retry


def test_connection_rate_limit(gw: Served, scripted: ScriptedUpstream) -> None:
    """rateLimit on a connection: past the burst 429 rate_limited + Retry-After, nothing sent."""
    c = gw.create_connection(
        None,
        upstreamUrl=scripted.base_url + "/echo",
        rateLimit={"requestsPerMinute": 60, "burst": 2},
    )
    assert c["rateLimit"] == {"requestsPerMinute": 60, "burst": 2}
    before = len(scripted.seen)
    codes = [httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10) for _ in range(3)]
    assert [r.status_code for r in codes[:2]] == [200, 200]
    _rate_limited(codes[2])
    assert len(scripted.seen) - before == 2
    assert _events(gw, c["slug"], "rate_limited")


def test_burst_defaults_to_requests_per_minute(gw: Served, scripted: ScriptedUpstream) -> None:
    """Without burst, the bucket holds requestsPerMinute requests."""
    c = gw.create_connection(
        None, upstreamUrl=scripted.base_url + "/echo", rateLimit={"requestsPerMinute": 2}
    )
    rs = [httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10) for _ in range(3)]
    assert [r.status_code for r in rs[:2]] == [200, 200]
    _rate_limited(rs[2])


def test_patch_connection_rate_limit_and_null_removes_it(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """PATCH sets rateLimit; null removes it and requests flow again."""
    c = gw.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
    path = f"/api/v1/virtual-keys/{c['slug']}"
    r = gw.api("PATCH", path, json={"rateLimit": {"requestsPerMinute": 1}})
    assert r.status_code == 200
    assert r.json()["rateLimit"]["requestsPerMinute"] == 1
    httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10)
    _rate_limited(httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10))
    r = gw.api("PATCH", path, json={"rateLimit": None})
    assert r.status_code == 200
    assert r.json()["rateLimit"] is None
    assert httpx.post(c["gatewayUrl"], headers=gw.h(), json=PING, timeout=10).status_code == 200


def test_api_key_rate_limit_via_patch(gw: Served, scripted: ScriptedUpstream) -> None:
    """PATCH /api/v1/api-keys/{id} sets rateLimit on a key; null removes it."""
    c = gw.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
    key, kid = gw.mcp_key()
    r = gw.api(
        "PATCH",
        f"/api/v1/api-keys/{kid}",
        json={"rateLimit": {"requestsPerMinute": 60, "burst": 1}, "name": "renamed"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "renamed"
    assert "key" not in r.json()
    assert httpx.post(c["gatewayUrl"], headers=gw.h(key), json=PING).status_code == 200
    _rate_limited(httpx.post(c["gatewayUrl"], headers=gw.h(key), json=PING, timeout=10))
    assert gw.api("PATCH", f"/api/v1/api-keys/{kid}", json={"rateLimit": None}).status_code == 200
    assert httpx.post(c["gatewayUrl"], headers=gw.h(key), json=PING).status_code == 200


def test_rate_limit_on_api_key_create(gw: Served) -> None:
    """rateLimit is settable on POST /api-keys."""
    r = gw.api(
        "POST",
        "/api/v1/api-keys",
        json={"name": "rl", "scopes": ["mcp"], "rateLimit": {"requestsPerMinute": 5, "burst": 7}},
    )
    assert r.status_code == 201
    assert r.json()["rateLimit"] == {"requestsPerMinute": 5, "burst": 7}


@pytest.mark.parametrize(
    "bad",
    [
        {"requestsPerMinute": 0},
        {"requestsPerMinute": -1},
        {"burst": 3},
        "fast",
        {"requestsPerMinute": "10"},
    ],
)
def test_invalid_rate_limit_is_422(gw: Served, bad: Any) -> None:
    """An invalid rateLimit is 422 naming the field, nothing stored."""
    c = gw.create_connection(None)
    path = f"/api/v1/virtual-keys/{c['slug']}"
    err = error_of(gw.api("PATCH", path, json={"rateLimit": bad}), 422)
    assert "rateLimit" in err["message"] or err.get("field") == "rateLimit"
    assert gw.api("GET", path).json()["rateLimit"] is None


def test_patch_api_key_fields_and_unknown_key(gw: Served) -> None:
    """PATCH /api-keys/{id} changes connections, expiresAt, tools; unknown id 404; bad 422."""
    c = gw.create_connection(None)
    _, kid = gw.mcp_key()
    r = gw.api(
        "PATCH",
        f"/api/v1/api-keys/{kid}",
        json={
            "connections": [c["slug"]],
            "expiresAt": "2099-01-01T00:00:00Z",
            "tools": {"allow": ["echo"], "deny": []},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["connections"] == [c["slug"]]
    assert body["expiresAt"].startswith("2099-01-01T00:00:00")
    assert body["tools"]["allow"] == ["echo"]
    error_of(gw.api("PATCH", "/api/v1/api-keys/no-such", json={"name": "x"}), 404)
    error_of(gw.api("PATCH", f"/api/v1/api-keys/{kid}", json={"tools": {"allow": "echo"}}), 422)


def test_auth_failures_per_minute(tmp_path_factory: pytest.TempPathFactory) -> None:
    """More than --auth-failures-per-minute failures from one address: 429 for that address."""
    home = tmp_path_factory.mktemp("contract-authfail") / "home"
    with serve(home, "--auth-failures-per-minute", "3") as s:
        url = s.url + "/v1/mcp/any-slug"
        first = [
            httpx.post(url, json=PING, headers={"Authorization": "Bearer ig_bad"}) for _ in range(3)
        ]
        assert [r.status_code for r in first] == [401, 401, 401]
        later = [
            httpx.post(url, json=PING, headers={"Authorization": "Bearer ig_bad"}) for _ in range(2)
        ]
        assert later[-1].status_code == 429, later[-1].text
        _rate_limited(later[-1])
        # even a good key from that address waits for the minute to pass
        assert s.api("GET", "/api/v1/virtual-keys").status_code in (200, 429)


def test_auth_failures_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """IGRIS_AUTH_FAILURES_PER_MINUTE sets the same bound."""
    home = tmp_path_factory.mktemp("contract-authfail-env") / "home"
    with serve(home, env={"IGRIS_AUTH_FAILURES_PER_MINUTE": "2"}) as s:
        rs = [httpx.post(s.url + "/v1/mcp/x-slug", json=PING) for _ in range(4)]
        assert [r.status_code for r in rs[:2]] == [401, 401]
        assert rs[-1].status_code == 429


async def test_tool_policy_denies_call_and_filters_list(
    gw: Served, upstream: UpstreamServer
) -> None:
    """A denied tools/call: JSON-RPC -32003 from the gateway; tools/list without it; tool_denied."""
    c = gw.create_connection(upstream, tools={"allow": [], "deny": ["who*"]})
    upstream.accept(c["_credential"])
    before = len(upstream.requests())
    async with streamable_session(c["gatewayUrl"], gw.h()) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        assert "whoami" not in names
        assert "echo" in names
        with pytest.raises(MCPError) as caught:
            await session.call_tool("whoami", {})
        assert caught.value.error.code == -32003
        assert caught.value.error.message == "tool whoami is not allowed"
    assert len(upstream.requests()) > before
    denied = _events(gw, c["slug"], "tool_denied")
    assert denied
    assert denied[0]["tool"] == "whoami"


async def test_key_tool_allow_list(gw: Served, upstream: UpstreamServer) -> None:
    """A key's tools.allow limits calls and the listed tools; deny wins over allow."""
    c = gw.create_connection(upstream)
    upstream.accept(c["_credential"])
    key, _ = gw.mcp_key(tools={"allow": ["echo", "whoami"], "deny": ["whoami"]})
    async with streamable_session(c["gatewayUrl"], gw.h(key)) as session:
        assert {t.name for t in (await session.list_tools()).tools} == {"echo"}
        with pytest.raises(MCPError) as caught:
            await session.call_tool("slow_progress", {"steps": 1, "delay": 0})
        assert caught.value.error.code == -32003


def test_denied_call_raw_json_rpc(gw: Served, scripted: ScriptedUpstream) -> None:
    """HTTP 200, same id, error -32003 "tool <name> is not allowed"; nothing sent upstream."""
    c = gw.create_connection(
        None, upstreamUrl=scripted.base_url + "/echo", tools={"deny": ["rm_rf"]}
    )
    before = len(scripted.seen)
    call = {
        "jsonrpc": "2.0",
        "id": "abc-7",
        "method": "tools/call",
        "params": {"name": "rm_rf", "arguments": {}},
    }
    r = httpx.post(
        c["gatewayUrl"],
        headers=gw.h(Accept="application/json, text/event-stream"),
        json=call,
        timeout=10,
    )
    assert r.status_code == 200
    text = r.text
    payload = json.loads(text[text.index("{") :]) if not text.startswith("{") else r.json()
    assert payload["id"] == "abc-7"
    assert payload["error"]["code"] == -32003
    assert payload["error"]["message"] == "tool rm_rf is not allowed"
    assert len(scripted.seen) == before


def test_mcp_method_header_mismatch_is_400(gw: Served, scripted: ScriptedUpstream) -> None:
    """Mcp-Method / Mcp-Name disagreeing with the body: 400 header_mismatch, nothing sent."""
    c = gw.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {}},
    }
    before = len(scripted.seen)
    error_of(
        httpx.post(
            c["gatewayUrl"], headers=gw.h(**{"Mcp-Method": "tools/list"}), json=call, timeout=10
        ),
        400,
        "header_mismatch",
    )
    error_of(
        httpx.post(
            c["gatewayUrl"],
            headers=gw.h(**{"Mcp-Method": "tools/call", "Mcp-Name": "whoami"}),
            json=call,
            timeout=10,
        ),
        400,
        "header_mismatch",
    )
    assert len(scripted.seen) == before
    ok = httpx.post(
        c["gatewayUrl"], headers=gw.h(**{"Mcp-Method": "tools/call", "Mcp-Name": "echo"}), json=call
    )
    assert ok.status_code == 200


async def test_max_concurrent(gw: Served, upstream: UpstreamServer) -> None:
    """maxConcurrent on a key: past N open requests, 429 too_many_concurrent."""
    c = gw.create_connection(upstream)
    upstream.accept(c["_credential"])
    key, kid = gw.mcp_key()
    r = gw.api("PATCH", f"/api/v1/api-keys/{kid}", json={"maxConcurrent": 2})
    assert r.status_code == 200
    assert r.json()["maxConcurrent"] == 2
    async with streamable_session(c["gatewayUrl"], gw.h(key)) as session:
        slow = asyncio.create_task(session.call_tool("slow_progress", {"steps": 4, "delay": 0.5}))
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(timeout=10) as http:
            extra = [http.post(c["gatewayUrl"], headers=gw.h(key), json=PING) for _ in range(3)]
            results = await asyncio.gather(*extra)
        assert 429 in [x.status_code for x in results]
        refused = next(x for x in results if x.status_code == 429)
        error_of(refused, 429, "too_many_concurrent")
        await slow


async def test_disable_ends_open_streams_within_a_second(
    gw: Served, upstream: UpstreamServer
) -> None:
    """Disabling a connection ends a request already open under it within 1 s; outcome revoked."""
    c = gw.create_connection(upstream)
    upstream.accept(c["_credential"])
    async with streamable_session(c["gatewayUrl"], gw.h()) as session:
        slow = asyncio.create_task(session.call_tool("slow_progress", {"steps": 30, "delay": 0.5}))
        await asyncio.sleep(1.0)
        assert gw.api("POST", f"/api/v1/virtual-keys/{c['slug']}/disable").status_code == 200
        started = time.monotonic()
        with pytest.raises(MCPError):  # the SDK's error for a closed stream
            await asyncio.wait_for(slow, 5)
        assert time.monotonic() - started < 2.5
    assert _events(gw, c["slug"], "revoked")


async def test_key_revocation_ends_open_streams(gw: Served, upstream: UpstreamServer) -> None:
    """Revoking a key ends its open requests; outcome revoked."""
    c = gw.create_connection(upstream)
    upstream.accept(c["_credential"])
    key, kid = gw.mcp_key()
    async with streamable_session(c["gatewayUrl"], gw.h(key)) as session:
        slow = asyncio.create_task(session.call_tool("slow_progress", {"steps": 30, "delay": 0.5}))
        await asyncio.sleep(1.0)
        assert gw.api("DELETE", f"/api/v1/api-keys/{kid}").status_code == 204
        started = time.monotonic()
        with pytest.raises(MCPError):
            await asyncio.wait_for(slow, 5)
        assert time.monotonic() - started < 2.5
    assert _events(gw, c["slug"], "revoked")


def test_serve_policy_flags_in_help(gw: Served) -> None:
    """serve takes --auth-failures-per-minute, --rate-limit-store and --max-stale."""
    out = gw.cli("serve", "--help").stdout
    for flag in ("--auth-failures-per-minute", "--rate-limit-store", "--max-stale"):
        assert flag in out


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    import shutil

    from igris_mw.testing.redis_server import redis_server

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("no redis-server on PATH (scripts/test installs it)")
    with redis_server(binary) as url:
        yield url


def test_rate_limit_store_shares_buckets_across_replicas(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream, redis_url: str
) -> None:
    """Two serve processes on one store with --rate-limit-store / IGRIS_RATE_LIMIT_STORE
    admit one bucket's worth between them."""
    home = tmp_path_factory.mktemp("contract-redis") / "home"
    with serve(home, "--rate-limit-store", redis_url) as a:
        b_env: dict[str, str | None] = {"IGRIS_RATE_LIMIT_STORE": redis_url}
        with serve(home, env=b_env, admin=a.admin) as b:
            c = a.create_connection(
                None,
                upstreamUrl=scripted.base_url + "/echo",
                rateLimit={"requestsPerMinute": 60, "burst": 4},
            )
            codes = []
            for i in range(8):
                s = (a, b)[i % 2]
                codes.append(
                    httpx.post(
                        f"{s.url}/v1/mcp/{c['slug']}", headers=s.h(), json=PING, timeout=10
                    ).status_code
                )
            assert codes.count(200) == 4, codes
            assert codes.count(429) == 4, codes
