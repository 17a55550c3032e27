"""Change notifications across processes: LISTEN/NOTIFY on ``igris_changes``.

Every committed write sends ``NOTIFY igris_changes, '<origin>|<kind>:<key>'``
inside its own transaction, so Postgres delivers it only on commit. Each
store object keeps one dedicated listening connection (never a pool
connection: a pooled connection is reset and handed to others, and a
notification arriving on it would be lost) and a background task that turns
notifications into ``Change`` calls. ``origin`` lets a store skip its own
writes, whose listeners it has already called in-process before the write
returned.

Staleness bound: a notification can only be missed while the listening
connection is down. When it comes back the task emits ``Change("all")``, so
caches flush then; while it is down (or if a connection dies silently, until
the periodic ping notices), other processes' caches are held stale only by
their TTL. The worst-case staleness when notifications are lost is therefore
the gateway cache TTL (default 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg

from igris_mw.errors import StoreUnavailable
from igris_mw.storage import Change

__all__ = ["CHANNEL", "Listener", "payload"]

CHANNEL = "igris_changes"
_KINDS = frozenset({"connection", "api_key", "all"})
log = logging.getLogger("igris_mw_postgres")


def payload(origin: str, kind: str, key: str | None) -> str:
    return f"{origin}|{kind}:{key or ''}"


def parse_payload(text: str) -> tuple[str, Change] | None:
    origin, sep, rest = text.partition("|")
    kind, _, key = rest.partition(":")
    if not sep or kind not in _KINDS:
        return None
    return origin, Change(kind, key or None)  # type: ignore[arg-type]


class Listener:
    """One listening connection and the task that reads it, reconnecting with backoff."""

    def __init__(
        self,
        connect: Callable[[], Any],
        origin: str,
        deliver: Callable[[Change], None],
        *,
        ping_interval: float = 5.0,
        max_backoff: float = 1.0,
    ) -> None:
        self._connect = connect
        self._origin = origin
        self._deliver = deliver
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    async def start(self) -> None:
        """Connect and LISTEN before returning, so no write after ``open()`` is missed."""
        self._conn = await self._listen()
        self._task = asyncio.create_task(self._run(), name="igris-postgres-listener")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._drop()

    async def _listen(self) -> psycopg.AsyncConnection[Any]:
        conn: psycopg.AsyncConnection[Any] = await self._connect()
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    @property
    def connected(self) -> bool:
        """False while the listening connection is down (the server likely is too)."""
        return self._conn is not None

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            try:
                if self._conn is None:
                    self._conn = await self._listen()
                    backoff = 0.05
                    self.reconnects += 1
                    log.warning("postgres change listener reconnected; flushing caches")
                    # notifications sent while we were away are gone
                    self._deliver(Change("all"))
                await self._consume(self._conn)
            except (psycopg.Error, OSError, TimeoutError, StoreUnavailable) as exc:
                if self._conn is not None:
                    log.warning(
                        "postgres change listener lost its connection (%s); reconnecting",
                        type(exc).__name__,
                    )
                await self._drop()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _consume(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            async for notify in conn.notifies(timeout=self._ping_interval):
                parsed = parse_payload(notify.payload)
                if parsed is None or parsed[0] == self._origin:
                    continue
                self._deliver(parsed[1])
            # quiet for a while: prove the connection is still there, so a
            # dead one is noticed within one ping interval, not at the TTL
            await asyncio.wait_for(conn.execute("SELECT 1"), timeout=self._ping_interval)
