"""A spare upstream connection after each GET (igris_mw._proxy.ready), seen from a
real upstream socket server that numbers the connections it accepts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from igris_mw._proxy import BodyPrefix, Forwarder, ProxyResult, Target

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
EVENT = b"event: message\ndata: {}\n\n"


class CountingUpstream:
    """Numbers accepted connections; answers ``GET`` with a stream that stays open
    until the client leaves, anything else with a small keep-alive JSON body."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        # (connection number, method, connections accepted when the request arrived)
        self.requests: list[tuple[int, str, int]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.accepted
        self.accepted += 1
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method = lines[0].split(" ")[0]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                self.requests.append((number, method, self.accepted))
                if method == "GET":
                    writer.write(SSE_HEAD + b"%x\r\n%s\r\n" % (len(EVENT), EVENT))
                    await writer.drain()
                    await reader.read()  # until the client closes the stream
                    return
                body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[CountingUpstream]:
    up = CountingUpstream()
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


@pytest_asyncio.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    fw = Forwarder(timeout=5.0)
    await fw.start()
    try:
        yield fw
    finally:
        await fw.close()


def _scope(method: str) -> dict[str, Any]:
    headers = [(b"host", b"gw.test")]
    if method == "GET":
        headers.append((b"accept", b"text/event-stream"))
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/v1/mcp/x",
        "raw_path": b"/v1/mcp/x",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
    }


async def _call(fw: Forwarder, up: CountingUpstream, method: str) -> tuple[ProxyResult, bytes]:
    """One request through ``fw``; a stream is left by the client after its first event."""
    got = bytearray()
    first = asyncio.Event()

    async def receive() -> dict[str, Any]:
        # A call's body came whole (the prefix): later receives wait, as a
        # server's do, until the client leaves (a stream: after its first event).
        await first.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            got.extend(message.get("body", b""))
            if b"\n\n" in got:
                first.set()

    target = Target(f"http://127.0.0.1:{up.port}/mcp", inject=(("Authorization", "Bearer s"),))
    prefix = BodyPrefix(b"{}", complete=True) if method != "GET" else None
    result = await asyncio.wait_for(
        fw.forward(_scope(method), receive, send, target, "", gateway_prefix="/v1/mcp/x",
                   prefix=prefix),
        5,
    )  # fmt: skip
    return result, bytes(got)


async def _until(check: Any, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


@pytest.mark.asyncio
async def test_the_next_stream_uses_a_connection_opened_before_it(
    forwarder: Forwarder, upstream: CountingUpstream
) -> None:
    result, body = await _call(forwarder, upstream, "GET")
    assert EVENT in body
    assert result.status == 200
    # The first stream paid its own handshake; a spare follows it.
    assert await _until(lambda: upstream.accepted == 2), upstream.accepted
    result, body = await _call(forwarder, upstream, "GET")
    assert EVENT in body
    assert result.status == 200
    number, method, accepted_then = upstream.requests[-1]
    # Served on the spare (connection 1), with no connection opened for it.
    assert (number, method, accepted_then) == (1, "GET", 2)
    # And the second stream leaves a spare of its own.
    assert await _until(lambda: upstream.accepted == 3), upstream.accepted


@pytest.mark.asyncio
async def test_calls_alone_open_no_spare(forwarder: Forwarder, upstream: CountingUpstream) -> None:
    for _ in range(5):
        result, _ = await _call(forwarder, upstream, "POST")
        assert result.status == 200
    await asyncio.sleep(0.2)
    # Five calls in turn on one pooled connection, nothing opened ahead.
    assert upstream.accepted == 1
    assert [r[0] for r in upstream.requests] == [0] * 5


@pytest.mark.asyncio
async def test_at_most_one_spare_waits_per_upstream(
    forwarder: Forwarder, upstream: CountingUpstream
) -> None:
    for _ in range(4):
        await _call(forwarder, upstream, "GET")
        assert await _until(lambda: upstream.open == 1)  # the stream's own closed: the spare
    await asyncio.sleep(0.2)
    # Each stream took the spare waiting for it (the first its own); one spare is left.
    assert upstream.accepted == 5
    assert upstream.open == 1


@pytest.mark.asyncio
async def test_closing_the_forwarder_closes_the_spare(upstream: CountingUpstream) -> None:
    fw = Forwarder(timeout=5.0)
    await fw.start()
    await _call(fw, upstream, "GET")
    assert await _until(lambda: upstream.accepted == 2 and upstream.open == 1)
    await fw.close()
    assert await _until(lambda: upstream.open == 0), "the spare was left open"


@pytest.mark.asyncio
async def test_a_spare_that_cannot_be_opened_changes_nothing(
    forwarder: Forwarder, caplog: pytest.LogCaptureFixture
) -> None:
    up = CountingUpstream()
    serve = up._serve

    async def serve_then_stop_listening(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert up.server is not None
        up.server.close()  # the spare's connect is refused from now on
        await serve(reader, writer)

    up.server = await asyncio.start_server(serve_then_stop_listening, "127.0.0.1", 0)
    up.port = up.server.sockets[0].getsockname()[1]
    with caplog.at_level("DEBUG", logger="igris_mw.proxy"):
        result, body = await _call(forwarder, up, "GET")
        assert result.status == 200
        assert EVENT in body
        assert await _until(lambda: "spare upstream connection could not be opened" in caplog.text)
    assert up.accepted == 1
