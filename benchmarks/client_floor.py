"""The client floor: CPU per proxied request spent in the upstream HTTP client.

The bare proxy spends about half of its busy CPU in aiohttp's client (py-spy);
the gateway uses the same client. This measures that client against the
leanest one that could replace it, in one process, against ``upstream.py``
in its own process (pinned to another CPU when there are two), uvloop as the
loop (as uvicorn runs it), the MCP ``tools/call`` POST of ``jsonrpc.lua``:

- ``aiohttp``: a ``ClientSession`` configured as the gateway's
  ``Forwarder._new_session`` (its ``ReadyConnector``, a TCPConnector, when
  this igris-mw has it; limit 0 / 1,024 per host,
  keep-alive 30 s, ``DummyCookieJar``, ``auto_decompress=False``,
  ``trust_env=False``, the same ``skip_auto_headers``, no resolver: the
  upstream is an IP literal), a prebuilt ``yarl.URL``, the response read
  with ``resp.content.readany()`` until it is empty, as the gateway relays.
- ``httptools``: an ``asyncio.Protocol`` per pooled keep-alive connection,
  ``httptools.HttpResponseParser`` fed from ``data_received``, the status and
  raw headers to one callback and every body chunk to another (no reader,
  no per-chunk future), one future per request (the end of the response).
- ``httptools_pull``: the same connection, but the caller awaits the head
  (a future) and then each chunk (``await read()``, a future only when the
  buffer is empty): the shape the gateway's ``await send()`` relay loop has.
- ``streams``: asyncio streams (``StreamReader.readuntil`` for the head,
  ``read`` for the body), a hand-written parse of the head, the same pool.

All three get the same input (method, a prebuilt target, the header list
the gateway would send: ``content-type``, ``accept``,
``mcp-protocol-version``, the injected ``authorization``; the body bytes)
and feed the same sink (status, raw headers, every chunk). Neither lean
client is production code: see "The client floor" in benchmarks/README.md
for what a replacement would have to handle.

CPU time (``time.process_time``: this process only, the upstream is
elsewhere) per request, variants in interleaved blocks (the order reversed
every block), median of blocks, at concurrency 1 and 16:

    python benchmarks/client_floor.py                 # a few minutes
    python benchmarks/client_floor.py --callgrind     # + instructions per request, 15-30 min

``--callgrind`` also runs each variant alone in a fresh process under
``valgrind --tool=callgrind`` with ``--cg-requests`` and 3x as many requests;
(I(3n) - I(n)) / 2n is one request with start-up and teardown cancelled
out (as ``hotpath.py`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hotpath import wait_for_port  # the benchmarks folder, as this script's own

HERE = Path(__file__).resolve().parent
BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hello"}}}'
)
VARIANTS = ("aiohttp", "aiohttp_plain", "httptools", "httptools_pull", "streams")

Head = Callable[[int, list[tuple[bytes, bytes]]], None]
Chunk = Callable[[bytes], None]
OneRequest = Callable[[], Awaitable[None]]


class Sink:
    """What the relay would do with the response: here, count and check it."""

    __slots__ = ("bad", "bytes", "heads")

    def __init__(self) -> None:
        self.heads = 0
        self.bad = 0
        self.bytes = 0

    def head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.heads += 1
        if status != 200 or not headers:
            self.bad += 1

    def chunk(self, data: bytes) -> None:
        self.bytes += len(data)


def _request_head(method: str, target: str, host: str, headers: list[tuple[str, str]]) -> str:
    parts = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError("a header name or value would break the request")
        parts.append(f"{name}: {value}\r\n")
    return "".join(parts)


# -- (2) asyncio.Protocol + httptools ------------------------------------------


class _H1(asyncio.Protocol):
    """One pooled HTTP/1.1 connection; the parser calls back into it."""

    def __init__(self, pool: H1Pool) -> None:
        import httptools

        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] | None = None
        self.on_head: Head | None = None
        self.on_chunk: Chunk | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.closed = False
        # pull mode (``httptools_pull``): the head and the chunks are awaited
        self.pull = False
        self.status = 0
        self.chunks: collections.deque[bytes] = collections.deque()
        self.eof = False
        self.keep = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # httptools.HttpParserError and the like
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("the upstream closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        done, self.done = self.done, None
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        if done is not None and not done.done():
            done.set_exception(exc)
        self._wake(exc)

    def _wake(self, exc: BaseException | None = None) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.pull:
            self.status = self.parser.get_status_code()
            done, self.done = self.done, None
            if done is not None and not done.done():
                done.set_result(None)
            return
        assert self.on_head is not None
        self.on_head(self.parser.get_status_code(), self.headers)

    def on_body(self, body: bytes) -> None:
        if self.pull:
            self.chunks.append(body)
            if self.waiter is not None:
                self._wake()
            return
        assert self.on_chunk is not None
        self.on_chunk(body)

    def on_message_complete(self) -> None:
        if self.pull:  # back to the pool once the reader has seen the end
            self.eof, self.keep = True, self.parser.should_keep_alive()
            if self.waiter is not None:
                self._wake()
            return
        done, self.done = self.done, None
        self.headers = []
        if self.parser.should_keep_alive():
            self.pool.idle.append(self)
        else:
            self.closed = True
            assert self.transport is not None
            self.transport.close()
        if done is not None and not done.done():
            done.set_result(None)


class H1Pool:
    """Keep-alive connections to one host:port, last in first out."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}"
        self.idle: list[_H1] = []

    async def _connect(self) -> _H1:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _H1(self), self.host, self.port)
        return conn

    async def _acquire(self) -> _H1:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return await self._connect()

    def _send(
        self, conn: _H1, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.done = done
        head = _request_head(method, target, self.host_header, headers)
        assert conn.transport is not None
        conn.transport.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        return done

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        on_head: Head,
        on_chunk: Chunk,
    ) -> None:
        """Callbacks: the head and every chunk as they are parsed; returns at the end."""
        conn = self.idle.pop() if self.idle and not self.idle[-1].closed else None
        if conn is None:
            conn = await self._acquire()
        conn.on_head, conn.on_chunk = on_head, on_chunk
        await self._send(conn, method, target, headers, body)

    async def request_pull(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> _H1:
        """Pull: returns once the head is in; then ``read`` until ``b""``."""
        conn = await self._acquire()
        conn.pull, conn.eof, conn.headers = True, False, []
        await self._send(conn, method, target, headers, body)
        return conn

    async def read(self, conn: _H1) -> bytes:
        """The next body chunk of a pull response; ``b""`` at its end (the connection
        goes back to the pool then)."""
        while True:
            if conn.chunks:
                return conn.chunks.popleft()
            if conn.eof:
                conn.pull = conn.eof = False
                if conn.keep:
                    self.idle.append(conn)
                else:
                    conn.closed = True
                    assert conn.transport is not None
                    conn.transport.close()
                return b""
            if conn.closed:
                raise ConnectionResetError("the upstream closed the connection")
            conn.waiter = asyncio.get_running_loop().create_future()
            await conn.waiter

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


# -- (3) asyncio streams -------------------------------------------------------


class StreamPool:
    """The same pool over ``asyncio.open_connection``; content-length and chunked bodies."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}"
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        on_head: Head,
        on_chunk: Chunk,
    ) -> None:
        while self.idle:  # skip those the upstream closed while idle (its keep-alive is 5 s)
            reader, writer = self.idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                break
            writer.close()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        head = _request_head(method, target, self.host_header, headers)
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        status = int(lines[0][9:12])
        fields = [tuple(line.split(b":", 1)) for line in lines[1:]]
        pairs = [(name, value.strip()) for name, value in fields]  # type: ignore[misc]
        length = -1
        chunked, keep = False, True
        for name, value in pairs:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif lower == b"connection":
                keep = value.lower() != b"close"
        on_head(status, pairs)
        if chunked:
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";", 1)[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers expected
                    break
                on_chunk(await reader.readexactly(size))
                await reader.readexactly(2)
        elif length >= 0:
            while length:
                data = await reader.read(min(length, 65536))
                if not data:
                    raise ConnectionResetError("the upstream closed mid-body")
                on_chunk(data)
                length -= len(data)
        else:
            keep = False
            while data := await reader.read(65536):
                on_chunk(data)
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


# -- the variants --------------------------------------------------------------


async def make_variant(name: str, upstream: str, token: str, sink: Sink) -> tuple[OneRequest, Any]:
    """``(one request, close)`` for the variant ``name``."""
    import yarl

    url = yarl.URL(upstream)
    assert url.host is not None
    assert url.port is not None
    headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2025-06-18"),
        ("authorization", f"Bearer {token}"),
    ]
    head, chunk = sink.head, sink.chunk
    if name in ("aiohttp", "aiohttp_plain"):
        import aiohttp

        try:  # the gateway's connector since the spare-connection change; a TCPConnector
            from igris_mw._proxy.ready import ReadyConnector as Connector
        except ImportError:  # an igris-mw from before it
            Connector = aiohttp.TCPConnector  # type: ignore[misc,assignment]
        if name == "aiohttp_plain":  # aiohttp's own connector: what ReadyConnector costs a POST
            Connector = aiohttp.TCPConnector  # type: ignore[misc,assignment]
        session = aiohttp.ClientSession(
            connector=Connector(limit=0, limit_per_host=1024, keepalive_timeout=30.0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=60.0),
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            raise_for_status=False,
        )

        async def one_aiohttp() -> None:
            resp = await session.request(
                "POST", url, headers=headers, data=BODY, allow_redirects=False, ssl=True
            )
            async with resp:
                head(resp.status, list(resp.raw_headers))
                while data := await resp.content.readany():
                    chunk(data)

        return one_aiohttp, session.close
    target = url.raw_path_qs
    if name == "httptools_pull":
        h1 = H1Pool(url.host, url.port)
        request_pull, read = h1.request_pull, h1.read

        async def one_pull() -> None:
            conn = await request_pull("POST", target, headers, BODY)
            head(conn.status, conn.headers)
            while data := await read(conn):
                chunk(data)

        async def close_pull() -> None:
            h1.close()

        return one_pull, close_pull
    pool: H1Pool | StreamPool
    pool = H1Pool(url.host, url.port) if name == "httptools" else StreamPool(url.host, url.port)
    request = pool.request

    async def one_lean() -> None:
        await request("POST", target, headers, BODY, head, chunk)

    async def close() -> None:
        pool.close()

    return one_lean, close


async def run_block(one: OneRequest, requests: int, concurrency: int) -> tuple[float, float]:
    """CPU seconds and wall seconds for ``requests`` requests, ``concurrency`` at a time."""
    per = requests // concurrency

    async def worker() -> None:
        for _ in range(per):
            await one()

    cpu, wall = time.process_time(), time.perf_counter()
    if concurrency == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def interleaved(
    upstream: str, token: str, variants: list[str], concurrencies: list[int], requests: int,
    blocks: int,
) -> dict[str, Any]:  # fmt: skip
    sinks = {name: Sink() for name in variants}
    made = {name: await make_variant(name, upstream, token, sinks[name]) for name in variants}
    out: dict[str, Any] = {}
    try:
        for conc in concurrencies:
            n = requests // conc * conc
            for name in variants:  # warm-up: connections open, code paths taken
                await run_block(made[name][0], max(conc * 20, 200), conc)
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            rate: dict[str, list[float]] = {name: [] for name in variants}
            for block in range(blocks):
                order = variants if block % 2 == 0 else variants[::-1]
                for name in order:
                    c, w = await run_block(made[name][0], n, conc)
                    cpu[name].append(c / n * 1e6)
                    rate[name].append(n / w)
            out[str(conc)] = {
                name: {
                    "cpu_us": statistics.median(cpu[name]),
                    "cpu_us_min": min(cpu[name]),
                    "cpu_us_max": max(cpu[name]),
                    "req_s": statistics.median(rate[name]),
                }
                for name in variants
            }
    finally:
        for name in variants:
            await made[name][1]()
    for name, sink in sinks.items():
        assert sink.bad == 0, f"{name}: {sink.bad} bad responses"
        assert sink.heads > 0, name
    return out


async def child(upstream: str, token: str, variant: str, requests: int, concurrency: int) -> None:
    sink = Sink()
    one, close = await make_variant(variant, upstream, token, sink)
    await run_block(one, requests // concurrency * concurrency, concurrency)
    await close()
    assert sink.bad == 0
    assert sink.heads > 0


# -- the parent: upstream process, pinning, table ------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _callgrind(env: dict[str, str], variant: str, requests: int, concurrency: int) -> float:
    cmd = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, str(Path(__file__)), "--child", variant, str(requests), str(concurrency),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{variant} under callgrind failed:\n{out.stderr[-3000:]}")
    match = re.search(r"Collected : (\d+)", out.stderr)
    assert match, out.stderr[-2000:]
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per block and variant")
    parser.add_argument("--blocks", type=int, default=9)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--cg-requests", type=int, default=300)
    parser.add_argument("--cg-rounds", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the raw figures too")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.child:
        variant, n, conc = args.child[0], int(args.child[1]), int(args.child[2])
        up, tok = os.environ["BENCH_UPSTREAM"], os.environ["BENCH_UPSTREAM_TOKEN"]
        uvloop.run(child(up, tok, variant, n, conc))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    assert set(variants) <= set(VARIANTS), variants
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    token = secrets.token_urlsafe(24)
    port = _free_port()
    upstream = f"http://127.0.0.1:{port}/mcp"
    env = {**os.environ, "BENCH_UPSTREAM_TOKEN": token, "BENCH_UPSTREAM": upstream}
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    cmd = [sys.executable, str(HERE / "upstream.py"), "--port", str(port)]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    up = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        if pin:
            os.sched_setaffinity(0, {0})
        results = uvloop.run(
            interleaved(upstream, token, variants, concurrencies, args.requests, args.blocks)
        )
        instructions: dict[str, dict[str, float]] = {}
        if args.callgrind:
            n1, n2 = args.cg_requests, 3 * args.cg_requests
            for conc in concurrencies:
                per: dict[str, list[float]] = {v: [] for v in variants}
                for r in range(args.cg_rounds):
                    for v in variants if r % 2 == 0 else variants[::-1]:
                        small = _callgrind(env, v, n1, conc)
                        large = _callgrind(env, v, n2, conc)
                        per[v].append((large - small) / (n2 // conc * conc - n1 // conc * conc))
                        print(f"callgrind c={conc} {v}: {per[v][-1]:,.0f}", file=sys.stderr)
                instructions[str(conc)] = {v: min(vals) for v, vals in per.items()}
    finally:
        up.terminate()
        up.wait(10)

    base = variants[0]
    print(
        f"client floor: {args.blocks} interleaved blocks of {args.requests} requests per "
        f"variant, median (min-max) CPU per request, uvloop, pinned={pin}"
    )
    cols = ["conc", "client", "CPU us/req", "(min-max)", f"- {base} us", "ratio", "req/s"]
    if instructions:
        cols += ["instr/req", f"- {base} instr"]
    rows = [cols]
    for conc in concurrencies:
        fig = results[str(conc)]
        for v in variants:
            f = fig[v]
            row = [
                str(conc), v, f"{f['cpu_us']:.1f}",
                f"({f['cpu_us_min']:.1f}-{f['cpu_us_max']:.1f})",
                f"{f['cpu_us'] - fig[base]['cpu_us']:+.1f}",
                f"{f['cpu_us'] / fig[base]['cpu_us']:.2f}x", f"{f['req_s']:,.0f}",
            ]  # fmt: skip
            if instructions:
                ins = instructions[str(conc)]
                row += [f"{ins[v]:,.0f}", f"{ins[v] - ins[base]:+,.0f}"]
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    for i, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if args.json:
        print(json.dumps({"cpu": results, "instructions": instructions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
