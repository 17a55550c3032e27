"""Per-request cost of the policies on the warm path, in microseconds.

Each figure is one operation the gateway now does per request (or per
response), measured in isolation next to the operation it sits beside, so
the added cost can be read off directly. The connect-time address check is
not here: it runs once per new upstream connection (cold path).

    .venv/bin/python benchmarks/policy_overhead.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from igris_mw._policy.egress import EgressPolicy
from igris_mw._policy.ratelimit import LocalRateLimitStore, RateLimit
from igris_mw._policy.tools import ToolPolicy, check_request, combine
from igris_mw._proxy.forward import Forwarder, read_body_prefix
from igris_mw._proxy.upstream import Target, request_headers, upstream_url

N = 200_000


def per_call(fn: Callable[[], Any], n: int = N, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time of one call, in microseconds."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(samples)


def per_await(make: Callable[[], Any], n: int = N // 4, rounds: int = 5) -> float:
    async def run() -> float:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(n):
                await make()
            samples.append((time.perf_counter() - start) / n * 1e6)
        return statistics.median(samples)

    return asyncio.run(run())


def main() -> None:
    target = Target("http://mcp.internal:9000/mcp", inject=(("Authorization", "Bearer tok"),))
    scope = {
        "type": "http",
        "method": "POST",
        "headers": [
            (b"host", b"gw.example"),
            (b"authorization", b"Bearer ig_x"),
            (b"content-type", b"application/json"),
            (b"accept", b"application/json, text/event-stream"),
            (b"content-length", b"120"),
            (b"mcp-protocol-version", b"2025-06-18"),
            (b"mcp-session-id", b"abc"),
            (b"user-agent", b"mcp-client"),
            (b"x-igris-user", b"alice"),
        ],
    }
    fwd = Forwarder(egress=EgressPolicy.from_setting("10.0.0.0/8"))
    fwd._literal_refusal("mcp.internal")  # warm: the cold check ran once
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "get_issue", "arguments": {"n": 1}},
        }
    ).encode()
    check = combine(ToolPolicy(allow=("get_*", "list_*")), ToolPolicy(deny=("*secret*",)))
    assert check is not None
    buckets = LocalRateLimitStore()
    limit = RateLimit(6_000_000 // 10, 1_000_000)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def plain() -> None:
        await read_body_prefix(receive, 65536)

    async def swept() -> None:
        await fwd.read_prefix(receive, 65536)

    async def with_timeout() -> None:
        await read_body_prefix(receive, 65536, 30.0)

    watched: set[Any] = set()
    marker = object()

    async def idle_registration() -> None:
        loop = asyncio.get_running_loop()
        watched.add(marker)
        _ = loop.time()  # the per-chunk stamp
        watched.discard(marker)

    rows = [
        (
            "request_headers (9 headers, new strip rules)",
            per_call(lambda: request_headers(scope, target)),
        ),
        ("upstream_url, no subpath or query", per_call(lambda: upstream_url(target, ""))),
        (
            "egress: literal check of a warm host (dict read)",
            per_call(lambda: fwd._literal_refusal("mcp.internal")),
        ),
        ("body peek: read_body_prefix, no deadline", per_await(plain)),
        ("body peek: Forwarder.read_prefix (sweeper deadline)", per_await(swept)),
        ("body peek: with asyncio.timeout instead (not used)", per_await(with_timeout)),
        ("idle deadline: set add/discard + one stamp", per_await(idle_registration)),
        (
            "tool policy: check_request on a tools/call body",
            per_call(lambda: check_request(body, check)),
        ),
        ("tool policy: allows(name), two policies", per_call(lambda: check.allows("get_issue"))),
        (
            "rate limit: in-process token bucket take()",
            per_call(lambda: buckets.take("key:abc", limit)),
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  us/op")
    for name, us in rows:
        print(f"{name:<{width}}  {us:6.2f}")


if __name__ == "__main__":
    main()
