"""A connection opened ahead, so the next stream to an upstream finds one ready.

An MCP stream (``GET`` with ``Accept: text/event-stream``, Streamable HTTP's
listening stream or the legacy SSE transport) holds its upstream connection
for as long as it runs, and a stream the client cuts leaves a connection that
cannot go back to the pool. So, pooled connections or not, each new stream
would pay a TCP (and TLS) handshake to the upstream before its first event
could arrive. ``ReadyConnector`` opens one spare connection to the same
upstream in the background whenever a ``GET`` takes a connection, and puts
it in aiohttp's idle pool: the next stream (or any request) takes it without
a handshake.

Bounds: at most one spare in the making per upstream (aiohttp's connection
key: host, port, TLS context, proxy), none while the pool already has an idle
connection for that key, and none through a forward proxy (it would hold a
tunnel open at the proxy). A spare is an ordinary idle connection: aiohttp's
keep-alive timeout closes it, an upstream that closed it is noticed when it
is taken (aiohttp then opens a new one), and it is opened by the same
connector, so the egress policy checks its address like any other. A spare
that cannot be opened is logged at debug level and not retried until the
next ``GET``. Closing the connector cancels spares in the making.

This relies on two of aiohttp's connector methods that are not public API
(``_create_connection`` to open, ``_release`` to pool); aiohttp has kept both,
with these signatures, throughout 3.x. tests/test_ready_connector.py fails
if an upgrade changes them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

__all__ = ["ReadyConnector"]

log = logging.getLogger("igris_mw.proxy")


class ReadyConnector(aiohttp.TCPConnector):
    """``aiohttp.TCPConnector`` that keeps one spare connection per upstream
    ready after a ``GET`` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opening: dict[Any, asyncio.Task[None]] = {}

    def connect(self, req: Any, traces: Any, timeout: aiohttp.ClientTimeout) -> Any:
        # Not a coroutine itself: a POST gets aiohttp's own coroutine back, one
        # frame fewer on every call (client_floor.py measured the extra frame).
        if req.method != "GET" or req.proxy:
            return super().connect(req, traces, timeout)
        return self._connect_and_ready(req, traces, timeout)

    async def _connect_and_ready(
        self, req: Any, traces: Any, timeout: aiohttp.ClientTimeout
    ) -> Any:
        conn = await super().connect(req, traces, timeout)
        key = req.connection_key
        if key not in self._opening and not self._conns.get(key) and not self.closed:
            self._opening[key] = asyncio.get_running_loop().create_task(
                self._open_spare(req, key, timeout)
            )
        return conn

    async def _open_spare(self, req: Any, key: Any, timeout: aiohttp.ClientTimeout) -> None:
        try:
            async with asyncio.timeout(timeout.sock_connect or timeout.connect or 30.0):
                proto = await self._create_connection(req, [], timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next GET pays its own handshake, as without spares
            log.debug("a spare upstream connection could not be opened: %s", type(exc).__name__)
            return
        finally:
            self._opening.pop(key, None)
        if self.closed:
            proto.close()
            return
        self._release(key, proto)

    def _close(self, *args: Any, **kwargs: Any) -> list[Any]:
        waiters: list[Any] = super()._close(*args, **kwargs)
        for task in self._opening.values():
            task.cancel()
            waiters.append(task)
        self._opening.clear()
        return waiters
