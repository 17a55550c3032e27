"""The audit writer: the queue, the batch writer and the spill file.

The request path only calls ``AuditWriter.emit`` (no await, no I/O). A
background task writes batches to the audit sink (the store, or a separate
sink). No event is dropped silently: while the sink is down, events wait in
memory; past ``max_pending`` they are spilled to a local JSON-lines file
(mode 0600), and everything is written once the sink is back, spilled
events first. The store makes re-appending an event id a no-op, so a batch
whose outcome was unknown is simply sent again. Hash chaining happens in
the store, atomically per connection (``igris_mw.storage.seal_event``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import attrs

from ..models import AuditEvent
from .events import event_from_line, event_to_line

__all__ = ["AuditStats", "AuditWriter"]

log = logging.getLogger("igris_mw.audit")


class _Sink(Protocol):
    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None: ...


@attrs.define
class AuditStats:
    emitted: int = 0
    written: int = 0
    spilled: int = 0
    failures: int = 0


class AuditWriter:
    """Queue + batch writer with a spill file.

    Args:
        sink: where batches go (``append_audit_events``).
        spill_path: JSON-lines file for events the sink could not take;
            ``None`` keeps them in memory only (bounded by nothing then:
            use it in tests).
        batch_size: most events in one append.
        max_pending: events kept in memory while the sink is down; past it
            the queue moves to the spill file (at the next failed retry).
        linger: seconds the writer waits before each append unless a full
            batch is queued already, so that events arriving together go in
            one append: under load a batch per event costs a store round
            trip (for SQLite, a thread hop and a commit) per request, about
            6 times the cost per event of a batch of 100 (SQLite, measured).
            Longer lingers make bigger batches, but a bigger batch holds the
            GIL longer in the SQLite thread, which shows in the p99 latency.
        close_timeout: the bound on ``aclose()`` when it is given none
            (``serve --shutdown-timeout`` sets it).
    """

    def __init__(
        self,
        sink: _Sink,
        *,
        spill_path: str | os.PathLike[str] | None = None,
        batch_size: int = 500,
        max_pending: int = 50_000,
        retry_delay: float = 0.5,
        max_retry_delay: float = 5.0,
        linger: float = 0.01,
        close_timeout: float = 5.0,
    ) -> None:
        self._sink = sink
        self.close_timeout = close_timeout
        self._linger = linger
        self._spill = Path(spill_path) if spill_path is not None else None
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._pending: deque[AuditEvent] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Set when aclose gave up on a task stuck in the sink: if that append
        # ever returns, the task must not touch the queue, which is spilled.
        self._abandoned = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = AuditStats()

    def emit(self, event: AuditEvent) -> None:
        """Queue one event. Never blocks, never raises for a sink problem."""
        self.stats.emitted += 1
        self._pending.append(event)
        self._idle.clear()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._abandoned = False
            await self._load_spill()
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="igris-audit-writer"
            )

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written; False on timeout."""
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self, timeout: float | None = None) -> None:
        """Write what is queued, spill the rest, stop; within ``timeout`` seconds.

        ``timeout`` (default ``close_timeout``) bounds the whole call, however
        the sink behaves: most of it goes to writing, the rest to stopping the
        writer task. A task stuck in the sink (an append that neither returns
        nor gives way to cancellation) is left behind; what it held is spilled,
        and the sink's skipping of known event ids makes a late append of the
        same events harmless.
        """
        if self._task is None:
            return
        budget = self.close_timeout if timeout is None else max(0.0, timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        # Keep a slice of the budget for stopping the task and writing the spill.
        await self.flush(budget - min(1.0, budget / 4))
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        if not done:
            self._abandoned = True
            log.error(
                "audit: the sink did not stop within the shutdown timeout (%.1fs); "
                "its events go to the spill file",
                budget,
            )
        elif not task.cancelled() and task.exception() is not None:
            log.error("audit: the writer task failed: %r", task.exception())
        if self._pending:
            if self._spill is not None:
                count = len(self._pending)
                try:
                    self._spill_pending()
                except OSError as exc:
                    log.error(
                        "audit: %d events are lost: the spill file %s cannot be written (%s)",
                        count,
                        self._spill,
                        exc.strerror or type(exc).__name__,
                    )
            else:
                log.error(
                    "audit: %d events could not be written and no spill file is set",
                    len(self._pending),
                )

    async def _run(self) -> None:
        delay = self._retry_delay
        while True:
            if self._spill is not None and self._spill.exists():
                # Spilled events are the oldest: nothing newer is written before them.
                await self._load_spill()
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self._linger > 0 and len(self._pending) < self._batch_size and not self._closing:
                await asyncio.sleep(self._linger)
            n = min(self._batch_size, len(self._pending))
            batch = [self._pending[i] for i in range(n)]
            try:
                await self._sink.append_audit_events(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.failures += 1
                log.warning(
                    "audit sink unavailable (%s); %d events waiting, retrying in %.1fs",
                    type(exc).__name__,
                    len(self._pending),
                    delay,
                )
                if len(self._pending) > self._max_pending and self._spill is not None:
                    # Nothing is in flight here, so the whole queue can move to disk.
                    events = list(self._pending)
                    self._pending.clear()
                    await asyncio.to_thread(self._write_spill, events)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
                continue
            if self._abandoned:
                return
            delay = self._retry_delay
            for _ in range(n):
                self._pending.popleft()
            self.stats.written += n

    def _spill_pending(self) -> None:
        events = list(self._pending)
        self._pending.clear()
        self._write_spill(events)

    def _write_spill(self, events: list[AuditEvent]) -> None:
        assert self._spill is not None
        # The data directory may not exist yet (serve on a shared store makes none).
        self._spill.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._spill, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            for event in events:
                f.write(event_to_line(event) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.stats.spilled += len(events)
        log.warning("audit: spilled %d events to %s", len(events), self._spill)

    def _loading_path(self) -> Path:
        assert self._spill is not None
        return self._spill.with_suffix(self._spill.suffix + ".loading")

    async def _load_spill(self) -> None:
        if self._spill is None or not (self._spill.exists() or self._loading_path().exists()):
            return
        events = await asyncio.to_thread(self._read_spill)
        # Spilled events are older than anything queued: they go first, so
        # each connection's chain keeps its order.
        self._pending.extendleft(reversed(events))
        # Only now, with the events in the queue, may the file go: a load
        # cancelled mid-read (a shutdown) leaves it for the next start.
        self._loading_path().unlink(missing_ok=True)
        if self._pending:
            self._idle.clear()
            self._wakeup.set()

    def _read_spill(self) -> list[AuditEvent]:
        assert self._spill is not None
        loading = self._loading_path()
        if self._spill.exists():
            if loading.exists():
                # A load cut short: its events are older than the spill's, so
                # they stay first.
                with loading.open("ab") as dst, self._spill.open("rb") as src:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
                self._spill.unlink()
            else:
                os.replace(self._spill, loading)
        events = []
        with loading.open(encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        events.append(event_from_line(line))
                    except (ValueError, KeyError):
                        log.error("audit: a corrupt line in the spill file was skipped")
        return events
