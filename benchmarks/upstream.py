"""The fast upstream: a raw ASGI MCP JSON-RPC responder on uvicorn (uvloop, httptools).

Every request must carry ``Authorization: Bearer $BENCH_UPSTREAM_TOKEN`` (the
credential the proxy injects), else 401: a benchmark that forgot to inject
would be measuring nothing.

- ``POST``: a JSON-RPC request; answers ``{"jsonrpc": "2.0", "id": <id>, "result": ...}``.
- ``GET`` with ``Accept: text/event-stream``: an SSE stream whose first event
  is sent at once; the stream stays open until the client leaves.

    BENCH_UPSTREAM_TOKEN=... python benchmarks/upstream.py --port 9001
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store")]
_FIRST_EVENT = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/ready"}\n\n'
_DENIED = b'{"error":"missing or wrong credential"}'


def make_app(token: str) -> Any:
    expected = b"Bearer " + token.encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = scope["headers"]
        auth = accept = b""
        for name, value in headers:
            if name == b"authorization":
                auth = value
            elif name == b"accept":
                accept = value
        method = scope["method"]
        body = b""
        if method == "POST":
            message = await receive()
            body = message.get("body", b"")
            while message.get("more_body"):
                message = await receive()
                body += message.get("body", b"")
        if auth != expected:
            await send({"type": "http.response.start", "status": 401, "headers": _JSON})
            await send({"type": "http.response.body", "body": _DENIED})
            return
        if method == "GET" and b"text/event-stream" in accept:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            await send({"type": "http.response.body", "body": _FIRST_EVENT, "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            request = {}
        rid = request.get("id") if isinstance(request, dict) else None
        reply = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": rid,
                "result": {"content": [{"type": "text", "text": "ok"}], "isError": False},
            },
            separators=(",", ":"),
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON, (b"content-length", str(len(reply)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": reply})

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = make_app(os.environ["BENCH_UPSTREAM_TOKEN"])
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
