"""End to end: IgrisGateway mounted around real FastAPI and Starlette apps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
from e2e_harness import client_headers, make_gateway, new_credential, serve, streamable_session
from fastapi import FastAPI
from mcp.types import TextContent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from upstream import UpstreamServer, fingerprint

MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


@contextlib.asynccontextmanager
async def run_lifespan(app: Any) -> AsyncIterator[None]:
    """Drive the ASGI lifespan protocol by hand (httpx.ASGITransport sends none)."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await asyncio.wait_for(from_app.get(), timeout=10)
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await asyncio.wait_for(from_app.get(), timeout=10)
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
        await asyncio.wait_for(task, timeout=10)


def _sse_result(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC message in a (JSON or single-event SSE) MCP response."""
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    messages = [json.loads(d) for d in data if d]
    assert messages, response.text
    return dict(messages[-1])


async def test_mounted_in_fastapi_served_by_uvicorn(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """Inside FastAPI under uvicorn: the app's routes and lifespan work, and so does the gateway."""
    state = {"started": False, "stopped": False}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["started"] = True
        yield
        state["stopped"] = True

    app = FastAPI(lifespan=lifespan)

    @app.get("/hello")
    async def hello() -> dict[str, Any]:
        return {"hello": "fastapi", "started": state["started"]}

    @app.get("/v1/status")
    async def status() -> dict[str, str]:
        return {"status": "app"}

    gw = make_gateway(tmp_path, app=app)
    credential = new_credential()
    upstream.accept(credential)
    async with serve(gw, lifespan="on") as base_url:
        assert state == {"started": True, "stopped": False}
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            assert (await http.get("/hello")).json() == {"hello": "fastapi", "started": True}
            assert (await http.get("/v1/status")).json() == {"status": "app"}
            openapi = (await http.get("/openapi.json")).json()
            assert "/hello" in openapi["paths"]
            missing = await http.get("/nope")
            assert missing.status_code == 404
            assert missing.json() == {"detail": "Not Found"}  # FastAPI's 404, not the gateway's

        _, key = await gw.service.create_api_key({"name": "mounted", "scopes": ["mcp"]})
        await gw.service.create_connection(
            {
                "slug": "mounted-fastapi",
                "name": "m",
                "upstreamUrl": upstream.base_url + "/mcp",
                "credential": credential,
            }
        )
        url = f"{base_url}/v1/mcp/mounted-fastapi"
        async with streamable_session(url, client_headers(key)) as session:
            result = await session.call_tool("whoami", {})
            assert isinstance(result.content[0], TextContent)
            assert result.content[0].text == fingerprint(credential)
    assert state["stopped"] is True

    # The gateway's shutdown flushed its audit queue into the store it closed.
    reopened = make_gateway(tmp_path)
    async with reopened:
        page = await reopened.service.list_audit("mounted-fastapi", limit=200)
    assert [e.tool for e in page.items if e.rpc_method == "tools/call"] == ["whoami"]


async def test_mounted_in_starlette_over_asgi_transport(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """In Starlette (ASGITransport): its routes answer, its lifespan runs, the gateway proxies."""
    state = {"started": False, "stopped": False}

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        state["started"] = True
        yield
        state["stopped"] = True

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"pong": True, "path": request.url.path})

    app = Starlette(routes=[Route("/ping", ping)], lifespan=lifespan)
    gw = make_gateway(tmp_path, app=app)
    credential = new_credential()
    upstream.accept(credential)

    async with run_lifespan(gw):
        assert state == {"started": True, "stopped": False}
        _, admin = await gw.service.create_api_key({"name": "admin", "scopes": ["admin"]})
        _, key = await gw.service.create_api_key({"name": "mcp", "scopes": ["mcp"]})
        transport = httpx.ASGITransport(app=cast(Any, gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/ping")).json() == {"pong": True, "path": "/ping"}
            assert (await http.get("/elsewhere")).status_code == 404

            created = await http.post(
                "/api/v1/virtual-keys",
                json={
                    "slug": "mounted-starlette",
                    "name": "s",
                    "upstreamUrl": upstream.base_url + "/mcp",
                    "credential": credential,
                },
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert created.status_code == 201, created.text
            assert created.json()["gatewayUrl"] == "http://testserver/v1/mcp/mounted-starlette"

            mcp = {"Authorization": f"Bearer {key}", **MCP_ACCEPT}
            init = await http.post(
                "/v1/mcp/mounted-starlette",
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                },
                headers=mcp,
            )
            assert init.status_code == 200, init.text
            assert _sse_result(init)["result"]["serverInfo"]["name"] == "igris-e2e-upstream"
            session = {
                **mcp,
                "Mcp-Session-Id": init.headers["mcp-session-id"],
                "MCP-Protocol-Version": "2025-06-18",
            }
            note = await http.post(
                "/v1/mcp/mounted-starlette",
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=session,
            )
            assert note.status_code == 202
            call = await http.post(
                "/v1/mcp/mounted-starlette",
                json={
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": "in starlette"}},
                },
                headers=session,
            )
            assert call.status_code == 200, call.text
            assert _sse_result(call)["result"]["content"][0]["text"] == "in starlette"
            closed = await http.delete("/v1/mcp/mounted-starlette", headers=session)
            assert closed.status_code == 200
    assert state["stopped"] is True
