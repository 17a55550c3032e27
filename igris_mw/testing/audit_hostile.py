"""Hostile gateway requests for audit tests: every sink must store their events.

A store or audit sink author (and igris-mw's own tests, for SQLite,
Postgres, the JSON-lines sink and the Vault store) drives an ``IgrisGateway``
on their sink with:

* ``hostile_requests()``: a hypothesis strategy of requests carrying any
  bytes in the path, the query, ``X-Igris-User`` and ``X-Igris-Metadata``,
  and any text (lone surrogates included) as JSON-RPC method and tool name;
* ``send_hostile(gateway, slug, key, request)``: sends one as a raw ASGI
  request (no HTTP client cleans anything up on the way);
* ``nul_then_normal(gateway, slug, key)``: the request that used to block
  the Postgres audit (``GET /v1/mcp/<slug>/%00`` with no key), then 200
  ordinary ones; returns the seconds until all 201 events were stored;
* ``upstream()``: a loopback MCP upstream to point the connection at;
* ``assert_all_stored(gateway)``: every emitted event written, none
  quarantined, every chain verifies;
* ``unwritable_directory(path)``: a directory nothing can be written in
  (a read-only tmpfs when run as root, mode 0500 otherwise), for spill
  failures.

Needs hypothesis and aiohttp (both test dependencies).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes

import attrs
from hypothesis import strategies as st

if TYPE_CHECKING:
    from .._gateway import IgrisGateway

__all__ = [
    "HostileRequest",
    "assert_all_stored",
    "hostile_requests",
    "nul_then_normal",
    "send_hostile",
    "unwritable_directory",
    "upstream",
]

# Every code point, lone surrogates and controls included.
_ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)


@attrs.frozen
class HostileRequest:
    tail: bytes  # the path after /v1/mcp/<slug>/
    query: bytes
    user: bytes | None
    metadata: bytes | None
    rpc_method: str
    tool: str
    authenticated: bool
    http_method: str


def _metadata() -> st.SearchStrategy[bytes | None]:
    json_value = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | _ANY_TEXT,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT, inner, max_size=4),
        max_leaves=12,
    )
    as_json = st.builds(
        lambda d, ascii_only: json.dumps(d, ensure_ascii=ascii_only).encode(
            "utf-8", "surrogatepass"
        ),
        st.dictionaries(_ANY_TEXT, json_value, max_size=6),
        st.booleans(),
    )
    # Large values: just under the 4096-byte header bound, and escapes that grow.
    big = st.sampled_from(
        [
            json.dumps({"k": "\u00e9" * 1900}, ensure_ascii=False).encode(),
            json.dumps({"k": "\x00" * 600}).encode(),
            json.dumps({"k": [1e9] * 800}).encode(),
            json.dumps({"k": "\x1b[2J" * 400}).encode(),
        ]
    )
    return st.none() | st.binary(max_size=300) | as_json | big


def hostile_requests() -> st.SearchStrategy[HostileRequest]:
    """Requests with hostile bytes wherever a client controls an audited field."""
    return st.builds(
        HostileRequest,
        tail=st.binary(max_size=3000) | st.sampled_from([b"\x00", b"%00", b"\xed\xa0\x80"]),
        query=st.binary(max_size=200),
        user=st.none() | st.binary(max_size=300) | st.sampled_from([b"\x00", b"\x1b]0;x\x07"]),
        metadata=_metadata(),
        rpc_method=_ANY_TEXT,
        tool=_ANY_TEXT,
        authenticated=st.booleans(),
        http_method=st.sampled_from(["POST", "POST", "GET", "DELETE"]),
    )


async def send_hostile(gateway: IgrisGateway, slug: str, key: str, request: HostileRequest) -> int:
    """Send ``request`` to ``gateway`` as a raw ASGI call; the response status."""
    # The decoded path as a server may hand it over (with lone surrogates for
    # bytes that are not UTF-8), the raw path percent-encoded.
    path = f"/v1/mcp/{slug}/" + request.tail.decode("utf-8", "surrogateescape")
    raw_path = f"/v1/mcp/{slug}/".encode() + quote_from_bytes(request.tail, safe="/").encode()
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    if request.authenticated:
        headers.append((b"authorization", b"Bearer " + key.encode()))
    if request.user is not None:
        headers.append((b"x-igris-user", request.user))
    if request.metadata is not None:
        headers.append((b"x-igris-metadata", request.metadata))
    body = b""
    if request.http_method == "POST":
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": request.rpc_method,
            "params": {"name": request.tool, "arguments": {}},
        }
        body = json.dumps(message).encode()  # ASCII: surrogates as \ud800 escapes
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": request.http_method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path,
        "root_path": "",
        "query_string": request.query,
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("gw.test", 80),
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await gateway(scope, receive, send)
    return status


async def nul_then_normal(gateway: IgrisGateway, slug: str, key: str, count: int = 200) -> float:
    """``GET /v1/mcp/<slug>/%00`` with no key, then ``count`` ordinary requests;
    the seconds from the first request until every event is stored."""
    start_written = gateway.audit.stats.written
    started = time.monotonic()
    nul = HostileRequest(b"\x00", b"", None, None, "", "", False, "GET")
    status = await send_hostile(gateway, slug, key, nul)
    assert status == 401, status
    ordinary = HostileRequest(b"", b"", b"alice", b'{"n":1}', "tools/list", "", True, "POST")
    for _ in range(count):
        status = await send_hostile(gateway, slug, key, ordinary)
        assert status == 200, status
    assert await gateway.audit.flush(10), "the audit queue did not drain"
    elapsed = time.monotonic() - started
    assert gateway.audit.stats.written - start_written == count + 1
    return elapsed


async def assert_all_stored(gateway: IgrisGateway) -> None:
    """Every event emitted so far is in the sink, none quarantined or refused
    by the sink for its text, every chain intact."""
    assert await gateway.audit.flush(30), "the audit queue did not drain"
    stats = gateway.audit.stats
    assert stats.quarantined == 0, stats
    assert stats.escaped == 0, stats  # made safe when built, not after a refusal
    assert stats.written == stats.emitted, stats
    report = await gateway.service.verify_audit()
    assert all(not problems for problems in report.values()), report


@asynccontextmanager
async def upstream() -> AsyncIterator[str]:
    """A loopback MCP upstream answering every request with a JSON-RPC result; its URL."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        await runner.cleanup()


@contextmanager
def unwritable_directory(path: Path) -> Iterator[Callable[[], None]]:
    """Make ``path`` a directory in which no file can be created or written,
    even by root; yields a function that makes it writable again.

    As root (whom file modes do not stop): a tmpfs mounted there and
    remounted read-only; otherwise mode 0500.

    Raises:
        OSError: running as root without the right to mount.
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o500)
        try:
            yield lambda: path.chmod(0o700)
        finally:
            path.chmod(0o700)
        return

    def mount(*args: str) -> None:
        # A fixed command on a path the test chose; tests only.
        done = subprocess.run(  # noqa: S603
            ["mount", *args],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(f"mount {' '.join(args)}: {done.stderr.strip()}")

    mount("-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path))
    try:
        mount("-o", "remount,ro", str(path))
        yield lambda: mount("-o", "remount,rw", str(path))
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)  # noqa: S603, S607
