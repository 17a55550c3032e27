"""What Prometheus metrics (and the request id) cost on the gateway's hot path.

One process drives two gateways side by side, one with ``metrics=True`` and
one without, both on the same in-memory store and credential, forwarding to
the same fast upstream (``benchmarks/upstream.py`` in its own process, so
the upstream does not compete for this event loop). Requests are plain ASGI
calls (no HTTP client in the measurement): the figures are the gateway's
own cost plus one real loopback round trip upstream. Rounds alternate
between the two gateways so that drift (other load on the machine) hits
both alike; tracing is off in both.

    .venv/bin/python benchmarks/metrics_overhead.py [--rounds 8] [--requests 2000] \
        [--concurrency 16]

Prints one line per configuration: requests/s at ``--concurrency`` (median
over rounds), this process's CPU time per request (median over rounds: the
figure least disturbed by other load on a shared machine), p50/p99
latency of single requests sent one at a time (over every request of every
latency round: at concurrency 1 no queueing hides or inflates the
difference), and metrics on relative to off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from igris_mw import IgrisGateway
from igris_mw.testing import FixedKeyring, MemoryStore

BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{}}}'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_upstream(token: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("upstream.py")), "--port", str(port)],
        env={**os.environ, "BENCH_UPSTREAM_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.post(url + "/mcp", content=BODY, timeout=1)
            return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("the upstream did not start") from None
            time.sleep(0.1)


async def _one(gw: IgrisGateway, scope: dict[str, Any]) -> float:
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects first
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    started = time.perf_counter()
    await gw(scope, receive, send)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"status {status}")
    return elapsed


async def _round(
    gw: IgrisGateway, scope: dict[str, Any], requests: int, concurrency: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            latencies.append(await _one(gw, scope))

    started = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    _CPU.append(time.process_time() - cpu)
    return requests / (time.perf_counter() - started), latencies


_CPU: list[float] = []  # CPU seconds of this process per round (the upstream is another)


def _scope(key: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/mcp/bench",
        "raw_path": b"/v1/mcp/bench",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"gw.bench"),
            (b"authorization", f"Bearer {key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
            (b"accept", b"application/json, text/event-stream"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }


async def _gateway(upstream: str, token: str, *, metrics: bool) -> tuple[IgrisGateway, str]:
    gw = IgrisGateway(
        None,
        store=MemoryStore(),
        crypto=FixedKeyring("bench"),
        metrics=metrics,
        allow_upstream_networks=["127.0.0.0/8"],  # the benchmark's upstream is on loopback
    )
    await gw.startup()
    _, key = await gw.service.create_api_key({"name": "bench", "scopes": ["mcp"]})
    await gw.service.create_connection(
        {"slug": "bench", "name": "bench", "upstreamUrl": upstream + "/mcp", "credential": token}
    )
    return gw, key


async def main(rounds: int, requests: int, concurrency: int) -> None:
    token = secrets.token_urlsafe(16)
    proc, upstream = _start_upstream(token)
    try:
        configs = {
            "metrics off": await _gateway(upstream, token, metrics=False),
            "metrics on": await _gateway(upstream, token, metrics=True),
        }
        rps: dict[str, list[float]] = {name: [] for name in configs}
        cpu: dict[str, list[float]] = {name: [] for name in configs}
        lat: dict[str, list[float]] = {name: [] for name in configs}
        for gw, key in configs.values():  # warm-up: caches, pools
            await _round(gw, _scope(key), 500, concurrency)
        for i in range(rounds):
            order = list(configs) if i % 2 == 0 else list(reversed(configs))
            for name in order:
                gw, key = configs[name]
                r, _ = await _round(gw, _scope(key), requests, concurrency)
                rps[name].append(r)
                cpu[name].append(_CPU[-1] / requests * 1e6)
                await gw.audit.flush(30)
            for name in order:
                gw, key = configs[name]
                _, latencies = await _round(gw, _scope(key), requests // 4, 1)
                lat[name].extend(latencies)
                await gw.audit.flush(30)
        print(
            f"{rounds} rounds x {requests} requests, concurrency {concurrency}, "
            "tracing off; upstream: benchmarks/upstream.py (own process)"
        )
        base: dict[str, float] = {}
        first = ""
        for name in configs:
            med = statistics.median(rps[name])
            us = statistics.median(cpu[name])
            q = statistics.quantiles(lat[name], n=100)
            p50, p99 = q[49] * 1000, q[98] * 1000
            line = (
                f"{name:12s} {med:7.0f} req/s  {us:6.1f} us CPU/req  "
                f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"
            )
            if not base:
                base = {"rps": med, "p50": p50, "cpu": us}
                first = name
            else:
                # Paired by round (the two ran back to back): the median of the
                # per-round ratios cancels most of the drift between rounds.
                rps_ratio = statistics.median(
                    a / b for a, b in zip(rps[name], rps[first], strict=True)
                )
                cpu_ratio = statistics.median(
                    a / b for a, b in zip(cpu[name], cpu[first], strict=True)
                )
                line += (
                    f"  | throughput {100 * (rps_ratio - 1):+.1f} %"
                    f"  CPU/req {100 * (cpu_ratio - 1):+.1f} %"
                    f"  p50 {100 * (p50 / base['p50'] - 1):+.1f} %"
                    "  (paired medians)"
                )
            print(line)
        gw_on = configs["metrics on"][0]
        body, _ = gw_on.metrics.exposition()
        print(f"(metrics on: exposition {len(body)} bytes after the run)")
        for gw, _ in configs.values():
            await gw.aclose()
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.requests, args.concurrency))
