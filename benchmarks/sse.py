"""SSE clients for ``run.py`` (run in their own process, pinned with the load generator).

``ttfe``: time to first event. For each sample a fresh TCP connection sends
``GET`` with ``Accept: text/event-stream`` and waits for the end of the
first event (the first blank line after the response head); the clock runs
from before ``connect`` to that byte, so a proxy's second hop (its own
connect to the upstream) is in the figure, as it is for a real client.
Targets are sampled round robin, so drift on a noisy machine hits them all.

``hold``: opens N streams at once through one target, reads each one's
first event, prints ``READY``, waits for a line on stdin, then closes them.

Configuration comes as JSON in ``BENCH_SSE`` (it holds keys: not in argv):

    {"targets": [{"name", "host", "port", "path", "auth"}], "samples": 200}   # ttfe
    {"target": {...}, "streams": 1000}                                        # hold
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import time
from typing import Any


def _request(target: dict[str, Any]) -> bytes:
    return (
        f"GET {target['path']} HTTP/1.1\r\nHost: {target['host']}:{target['port']}\r\n"
        f"Authorization: {target['auth']}\r\nAccept: text/event-stream\r\n"
        "MCP-Protocol-Version: 2025-06-18\r\n\r\n"
    ).encode()


def _first_event_ms(host: str, port: int, request: bytes) -> float:
    started = time.perf_counter()
    sock = socket.create_connection((host, port))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"stream closed before the first event: {buf[:200]!r}")
            buf += data
            head = buf.find(b"\r\n\r\n")
            if head >= 0 and buf.find(b"\n\n", head + 4) >= 0:
                break
        elapsed = (time.perf_counter() - started) * 1000
        if not buf.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"not a 200: {buf[:200]!r}")
        return elapsed
    finally:
        sock.close()


def ttfe(config: dict[str, Any]) -> dict[str, Any]:
    targets = config["targets"]
    requests = [_request(t) for t in targets]
    samples: dict[str, list[float]] = {t["name"]: [] for t in targets}
    for t, req in zip(targets, requests, strict=True):  # warm-up: imports, pools, caches
        for _ in range(20):
            _first_event_ms(t["host"], t["port"], req)
    for _ in range(config["samples"]):
        for t, req in zip(targets, requests, strict=True):
            samples[t["name"]].append(_first_event_ms(t["host"], t["port"], req))
            time.sleep(0.003)  # let the servers finish tearing the last stream down
    return {
        name: {"p50_ms": statistics.median(v), "p90_ms": statistics.quantiles(v, n=10)[-1]}
        for name, v in samples.items()
    }


async def hold(config: dict[str, Any]) -> None:
    import aiohttp

    t = config["target"]
    url = f"http://{t['host']}:{t['port']}{t['path']}"
    headers = {"Authorization": t["auth"], "Accept": "text/event-stream"}
    opening = asyncio.Semaphore(100)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def open_one() -> aiohttp.ClientResponse:
            async with opening:
                resp = await session.get(url, headers=headers)
                if resp.status != 200:
                    raise RuntimeError(f"stream refused: {resp.status}")
                buf = b""
                while b"\n\n" not in buf:
                    chunk = await resp.content.readany()
                    if not chunk:
                        raise RuntimeError("stream closed before the first event")
                    buf += chunk
                return resp

        streams = await asyncio.gather(*(open_one() for _ in range(config["streams"])))
        print("READY", len(streams), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for resp in streams:
            resp.close()


def main() -> None:
    config = json.loads(os.environ["BENCH_SSE"])
    if sys.argv[1:] == ["ttfe"]:
        print(json.dumps(ttfe(config)), flush=True)
    elif sys.argv[1:] == ["hold"]:
        asyncio.run(hold(config))
    else:
        sys.exit("usage: BENCH_SSE='{...}' python benchmarks/sse.py ttfe|hold")


if __name__ == "__main__":
    main()
