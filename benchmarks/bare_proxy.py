"""The baseline: the thinnest aiohttp pass-through that injects a header.

A raw ASGI app on the gateway's own server stack (uvicorn, uvloop,
httptools) with one shared ``aiohttp.ClientSession``: it drops the client's
``Authorization``/``Host`` and the hop-by-hop headers, adds
``Authorization: Bearer $BENCH_UPSTREAM_TOKEN``, sends the body, and streams
the response back chunk by chunk (so SSE works through it too). No key
check, no audit, no path checks: what is left is the cost of being an HTTP
proxy in Python at all, which is what igris-mw is measured against.

    BENCH_UPSTREAM_TOKEN=... python benchmarks/bare_proxy.py --port 9002 \
        --upstream http://127.0.0.1:9001/mcp
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import aiohttp

_DROP = frozenset(
    {b"authorization", b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te",
     b"upgrade", b"proxy-authorization", b"trailer", b"content-length"}
)  # fmt: skip
_DROP_RESPONSE = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})


def make_app(upstream: str, token: str) -> Any:
    inject = ("Authorization", f"Bearer {token}")
    session: aiohttp.ClientSession | None = None

    async def lifespan(receive: Any, send: Any) -> None:
        nonlocal session
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    auto_decompress=False,
                    skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if session is not None:
                    await session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http" or session is None:
            return
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in _DROP
        ]
        headers.append(inject)
        body = b""
        if scope["method"] in ("POST", "PUT", "PATCH"):
            message = await receive()
            body = message.get("body", b"")
            while message.get("more_body"):
                message = await receive()
                body += message.get("body", b"")
        async with session.request(
            scope["method"], upstream, headers=headers, data=body or None, allow_redirects=False
        ) as resp:
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [
                        (name.lower(), value)
                        for name, value in resp.raw_headers
                        if name.lower() not in _DROP_RESPONSE
                    ],
                }
            )
            while chunk := await resp.content.readany():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the upstream MCP URL")
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.upstream, os.environ["BENCH_UPSTREAM_TOKEN"]),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
