"""The audit writer: the queue, the batch writer, the spill file and quarantine.

The request path only calls ``AuditWriter.emit`` (no await, no I/O). A
background task writes batches to the audit sink (the store, or a separate
sink). No event is dropped silently:

* **Outage** (the sink raises anything but ``AuditRejected``: connection
  refused, timeout, a lock): the batch stays where it is and is sent again
  after a growing delay. The store makes re-appending an event id a no-op,
  so a batch whose outcome was unknown is simply sent again.
* **Rejection** (``AuditRejected``: the sink refuses a value of the batch):
  the batch is split in halves until the refused event is alone; that event
  goes to the quarantine file (JSON lines, 0600, with the reason) and is
  counted in ``stats.quarantined``; the others are written in their order.
  One bad event never holds up the ones after it.
* **Spill**: past ``max_pending`` events in memory, the queue moves to the
  end of a local JSON-lines spill file (0600, at most ``max_spill_bytes``).
  Spilled events are older than anything in memory and are written first,
  read back in chunks of one batch from a cursor (``<spill>.cursor``, the
  byte offset already written) so that an outage of any length costs
  bounded memory and linear I/O. The file goes once it is all written.
* **Fail closed**: when memory is full and the spill cannot take the queue
  (full, or a write fails), nothing is removed from memory and
  ``failing_closed`` turns true; the gateway then answers new requests with
  503 ``audit_unavailable`` (``failure="closed"``, the default). It turns
  false as soon as the sink or the spill takes events again. With
  ``failure="open"`` requests go on and the events past ``max_pending`` are
  dropped, counted in ``stats.dropped`` and logged.

Hash chaining happens in the store, atomically per connection
(``igris_mw.storage.seal_event``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import attrs

from .._errors import AuditRejected
from ..models import AuditEvent, format_time, utcnow
from .events import event_from_line, event_to_line, safe_event

__all__ = ["DEFAULT_MAX_SPILL_BYTES", "AuditStats", "AuditWriter"]

log = logging.getLogger("igris_mw.audit")

DEFAULT_MAX_SPILL_BYTES = 1 << 30
"""The spill file's default bound: 1 GiB, about 2.5 million events."""
_CHUNK_BYTES = 4 << 20  # most bytes read from the spill at once
_PIECE_BYTES = 1 << 20  # bytes per write() when spilling

FailureMode = Literal["closed", "open"]


class _Sink(Protocol):
    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None: ...


@attrs.define
class AuditStats:
    emitted: int = 0
    written: int = 0
    spilled: int = 0
    failures: int = 0
    quarantined: int = 0
    escaped: int = 0  # stored only in their safe form, after the sink refused them
    dropped: int = 0


class AuditWriter:
    """Queue + batch writer with a spill file, quarantine and fail-closed.

    Args:
        sink: where batches go (``append_audit_events``).
        spill_path: JSON-lines file for events the sink could not take;
            ``None``: none, so ``max_pending`` events in memory is the limit.
        batch_size: most events in one append.
        max_pending: events kept in memory; past it the queue moves to the
            spill file, and when that cannot take it the writer fails closed.
        max_spill_bytes: the bound on the spill file's size.
        quarantine_path: JSON-lines file for events a sink refuses; default
            ``<spill dir>/audit-quarantine.jsonl`` (with no spill file, a
            refused event is only logged, by id).
        failure: ``"closed"`` (refuse requests rather than lose events) or
            ``"open"`` (drop events rather than refuse requests).
        linger: seconds the writer waits before each append unless a full
            batch is queued already, so that events arriving together go in
            one append: under load a batch per event costs a store round
            trip (for SQLite, a thread hop and a commit) per request, about
            6 times the cost per event of a batch of 100 (SQLite, measured).
            Longer lingers make bigger batches, but a bigger batch holds the
            GIL longer in the SQLite thread, which shows in the p99 latency.
        close_timeout: the bound on ``aclose()`` when it is given none
            (``serve --shutdown-timeout`` sets it).

    ``max_pending``, ``max_spill_bytes``, ``retry_delay`` and
    ``max_retry_delay`` stay settable attributes.

    Attributes:
        failing_closed: true while the gateway must refuse requests (see above);
            ``refusing`` is the same.
        saturated: true while memory is full and the spill takes nothing,
            whatever ``failure`` says (for readiness checks).
    """

    def __init__(
        self,
        sink: _Sink,
        *,
        spill_path: str | os.PathLike[str] | None = None,
        batch_size: int = 500,
        max_pending: int = 50_000,
        max_spill_bytes: int = DEFAULT_MAX_SPILL_BYTES,
        quarantine_path: str | os.PathLike[str] | None = None,
        failure: FailureMode = "closed",
        retry_delay: float = 0.5,
        max_retry_delay: float = 5.0,
        linger: float = 0.01,
        close_timeout: float = 5.0,
    ) -> None:
        if failure not in ("closed", "open"):
            raise ValueError(f"failure must be 'closed' or 'open', got {failure!r}")
        self._sink = sink
        self.close_timeout = close_timeout
        self._linger = linger
        self._spill = Path(spill_path) if spill_path is not None else None
        if quarantine_path is None and self._spill is not None:
            quarantine_path = self._spill.parent / "audit-quarantine.jsonl"
        self.quarantine_path = Path(quarantine_path) if quarantine_path is not None else None
        self._batch_size = batch_size
        self.max_pending = max_pending
        self.max_spill_bytes = max_spill_bytes
        self.failure: FailureMode = failure
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._pending: deque[AuditEvent] = deque()
        # The spill: bytes [cursor, size) of the file are events not yet written.
        self._spill_cursor = 0
        self._spill_size = 0
        self._spill_lines = 0  # lines in [cursor, size)
        self._stale_spill = False
        self._wakeup = asyncio.Event()
        self._pressure = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._sink_down = False
        # Set when aclose gave up on a task stuck in the sink: if that append
        # ever returns, the task must not touch the queue, which is spilled.
        self._abandoned = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.failing_closed = False
        # The same, under the name /readyz reads (igris_mw._ops.readiness).
        self.refusing = False
        self.saturated = False
        self.stats = AuditStats()

    def emit(self, event: AuditEvent) -> None:
        """Queue one event. Never blocks, never raises for a sink problem."""
        self.stats.emitted += 1
        pending = self._pending
        pending.append(event)
        if len(pending) > self.max_pending and self._sink_down:
            # Wake the writer from its retry delay: the queue must move to disk now.
            self._pressure.set()
        self._idle.clear()
        self._wakeup.set()

    @property
    def pending(self) -> int:
        """Events not yet written: in memory plus in the spill file."""
        return len(self._pending) + self._spill_lines

    @property
    def pending_in_memory(self) -> int:
        return len(self._pending)

    @property
    def spill_bytes(self) -> int:
        """Bytes of the spill file not yet written to the sink."""
        return self._spill_size - self._spill_cursor

    async def start(self) -> None:
        if self._task is None:
            self._closing = False
            self._abandoned = False
            try:
                await asyncio.to_thread(self._open_spill)
            except OSError as exc:
                # Its events stay in the file for a later start; new ones are kept apart.
                log.error("audit: the spill file %s cannot be read (%s)", self._spill, exc)
            if self.spill_bytes:
                self._idle.clear()
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
                    # At shutdown the size bound gives way: losing events is worse.
                    self._write_spill(list(self._pending), bounded=False)
                    self._pending.clear()
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

    # -- the writer task -------------------------------------------------------
    async def _run(self) -> None:
        delay = self.retry_delay
        while True:
            from_spill = self._spill_size > self._spill_cursor
            if from_spill:
                # Spilled events are the oldest: nothing newer is written before them.
                try:
                    batch, end, lines = await asyncio.to_thread(self._read_spill_chunk)
                except FileNotFoundError:
                    log.error(
                        "audit: the spill file %s was removed; %d events in it are lost",
                        self._spill,
                        self._spill_lines,
                    )
                    self._spill_size = self._spill_cursor = self._spill_lines = 0
                    continue
                except OSError as exc:
                    log.error("audit: the spill file %s cannot be read (%s)", self._spill, exc)
                    await self._wait_retry(delay)
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                if not batch and end == self._spill_cursor:
                    await asyncio.to_thread(self._drop_spill)
                    continue
            else:
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
                written = await self._deliver(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._abandoned:
                    return
                self.stats.failures += 1
                self._sink_down = True
                log.warning(
                    "audit sink unavailable (%s); %d events waiting, retrying in %.1fs",
                    type(exc).__name__,
                    self.pending,
                    delay,
                )
                await self._relieve_memory()
                await self._wait_retry(delay)
                delay = min(delay * 2, self.max_retry_delay)
                continue
            if self._abandoned:
                return
            delay = self.retry_delay
            self._sink_down = False
            self.stats.written += written
            if from_spill:
                await asyncio.to_thread(self._advance_spill, end, lines)
            else:
                for _ in range(len(batch)):
                    self._pending.popleft()
            if len(self._pending) > self.max_pending:
                # The sink keeps up more slowly than requests come: to disk.
                await self._relieve_memory()
            elif self.saturated:
                self._set_saturated(False)

    async def _deliver(self, batch: list[AuditEvent]) -> int:
        """Append ``batch``; a refused event is isolated by halving and
        quarantined. Returns the number written. Raises for an outage (the
        halves already written are skipped by id when the batch comes again)."""
        try:
            await self._sink.append_audit_events(batch)
        except AuditRejected as exc:
            if len(batch) == 1:
                # An event built elsewhere than the gateway may not have been
                # made safe yet: its safe form is stored if the sink takes it.
                safe = safe_event(batch[0])
                if safe is not batch[0]:
                    try:
                        await self._sink.append_audit_events([safe])
                    except AuditRejected:
                        pass
                    else:
                        self.stats.escaped += 1
                        log.warning("audit: event %s stored in its escaped form", safe.id)
                        return 1
                await asyncio.to_thread(self._quarantine, batch[0], exc.message)
                return 0
            mid = len(batch) // 2
            return await self._deliver(batch[:mid]) + await self._deliver(batch[mid:])
        return len(batch)

    async def _wait_retry(self, delay: float) -> None:
        """Sleep ``delay`` seconds, moving the queue to disk whenever it fills meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (left := deadline - loop.time()) > 0:
            self._pressure.clear()
            try:
                async with asyncio.timeout(left):
                    await self._pressure.wait()
            except TimeoutError:
                return
            await self._relieve_memory()

    async def _relieve_memory(self) -> None:
        """Past ``max_pending``: the queue to the spill file, else fail closed (or drop)."""
        if len(self._pending) <= self.max_pending:
            return
        if self._spill is not None:
            events = list(self._pending)
            try:
                count = await asyncio.to_thread(self._write_spill, events, bounded=True)
            except OSError as exc:
                log.error(
                    "audit: the spill file %s cannot take %d events (%s)",
                    self._spill,
                    len(events),
                    exc.strerror or type(exc).__name__,
                )
            else:
                # Only now, with the events on disk, may they leave memory
                # (emit may have added more on the right meanwhile).
                for _ in range(count):
                    self._pending.popleft()
                if len(self._pending) <= self.max_pending:
                    self._set_saturated(False)
                    return
        self._set_saturated(True)
        if self.failure == "open":
            extra = len(self._pending) - self.max_pending
            for _ in range(extra):
                self._pending.pop()
            self.stats.dropped += extra
            log.error(
                "audit: %d events dropped: the sink and the spill take nothing "
                "(audit failure mode 'open')",
                extra,
            )

    def _set_saturated(self, value: bool) -> None:
        if value != self.saturated:
            if value:
                log.error(
                    "audit: memory and spill are full; %s",
                    "new gateway requests are refused (503 audit_unavailable)"
                    if self.failure == "closed"
                    else "events are dropped (audit failure mode 'open')",
                )
            else:
                log.warning("audit: events are recorded again")
        self.saturated = value
        self.failing_closed = self.refusing = value and self.failure == "closed"

    # -- quarantine --------------------------------------------------------------
    def _quarantine(self, event: AuditEvent, reason: str) -> None:
        self.stats.quarantined += 1
        if self.quarantine_path is None:
            log.error("audit: event %s refused by the sink and not kept: %s", event.id, reason)
            return
        record = {
            "quarantinedAt": format_time(utcnow()),
            "reason": reason,
            "event": event.to_json(),
        }
        # ensure_ascii: whatever the event holds (it was refused for it), the line is ASCII.
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True, default=repr) + "\n"
        self.quarantine_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.quarantine_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # One write() per record: workers sharing the file never interleave lines.
            _write_all(fd, line.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        log.error(
            "audit: event %s refused by the sink, kept in %s: %s",
            event.id,
            self.quarantine_path,
            reason,
        )

    # -- the spill file (all run in a worker thread) ---------------------------
    def _cursor_path(self) -> Path:
        assert self._spill is not None
        return self._spill.with_name(self._spill.name + ".cursor")

    def _loading_path(self) -> Path:
        assert self._spill is not None
        return self._spill.with_suffix(self._spill.suffix + ".loading")

    def _open_spill(self) -> None:
        """Find the spill left by an earlier run, and where its unwritten part starts."""
        if self._spill is None:
            return
        loading = self._loading_path()
        if loading.exists():
            # Left by an older version mid-load: its events are older than the spill's.
            if self._spill.exists():
                with loading.open("ab") as dst, self._spill.open("rb") as src:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
            os.replace(loading, self._spill)
            self._cursor_path().unlink(missing_ok=True)
        try:
            self._spill_size = self._spill.stat().st_size
        except FileNotFoundError:
            self._spill_size = self._spill_cursor = self._spill_lines = 0
            with contextlib.suppress(OSError):
                self._cursor_path().unlink(missing_ok=True)
            return
        try:
            cursor = int(self._cursor_path().read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            cursor = 0
        self._spill_cursor = cursor if 0 <= cursor <= self._spill_size else 0
        # Counted once at start (a fast scan), then kept up to date.
        lines = 0
        with self._spill.open("rb") as f:
            f.seek(self._spill_cursor)
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
        self._spill_lines = lines

    def _read_spill_chunk(self) -> tuple[list[AuditEvent], int, int]:
        """At most one batch of events from the cursor on, the offset after
        them and the number of lines read."""
        assert self._spill is not None
        events: list[AuditEvent] = []
        with self._spill.open("rb") as f:
            f.seek(self._spill_cursor)
            offset = self._spill_cursor
            read = lines = 0
            while len(events) < self._batch_size and read < _CHUNK_BYTES:
                raw = f.readline()
                if not raw:
                    break
                offset += len(raw)
                read += len(raw)
                lines += raw.endswith(b"\n")
                line = raw.strip()
                if not line:
                    continue
                try:
                    events.append(event_from_line(line.decode("utf-8")))
                except (ValueError, KeyError, UnicodeDecodeError):
                    log.error("audit: a corrupt line in the spill file was skipped")
        self._spill_size = max(self._spill_size, offset)
        return events, offset, lines

    def _advance_spill(self, offset: int, lines: int) -> None:
        """Record that the spill is written up to ``offset``; remove it once all is."""
        self._spill_cursor = offset
        self._spill_lines = max(0, self._spill_lines - lines)
        if offset >= self._spill_size:
            self._drop_spill()
            return
        cursor = self._cursor_path()
        tmp = cursor.with_name(cursor.name + ".tmp")
        # A cursor not saved (or lost in a crash) only replays events the
        # sink skips by id; the one in memory is what counts while running.
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(str(offset))
            os.replace(tmp, cursor)
        except OSError as exc:
            log.warning("audit: the spill cursor %s cannot be saved (%s)", cursor, exc.strerror)

    def _drop_spill(self) -> None:
        assert self._spill is not None
        self._spill_size = self._spill_cursor = self._spill_lines = 0
        try:
            self._spill.unlink(missing_ok=True)
            self._cursor_path().unlink(missing_ok=True)
        except OSError as exc:
            # Written in full: the next write truncates it (see _write_spill).
            log.warning("audit: the spill file %s cannot be removed (%s)", self._spill, exc)
            self._stale_spill = True

    def _write_spill(self, events: list[AuditEvent], *, bounded: bool) -> int:
        """Append ``events`` to the spill file, fsynced: all of them, or
        (``bounded``) the first ones that fit under ``max_spill_bytes``.
        Returns how many; a failed write leaves the file as it was. Written
        in pieces of about 1 MiB, so a spill costs no second copy of the queue.

        Raises:
            OSError: the file cannot be written, or not one event fits (``ENOSPC``).
        """
        assert self._spill is not None
        # The data directory may not exist yet (serve on a shared store makes none).
        self._spill.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if self._stale_spill:
            flags |= os.O_TRUNC  # all of it was written already, but it could not go
        fd = os.open(self._spill, flags, 0o600)
        self._stale_spill = False
        count = written = 0
        try:
            size = os.fstat(fd).st_size
            room = self.max_spill_bytes - size if bounded else None
            try:
                piece: list[bytes] = []
                piece_bytes = 0
                for event in events:
                    line = (event_to_line(event) + "\n").encode("utf-8", "replace")
                    if room is not None and written + piece_bytes + len(line) > room:
                        break
                    piece.append(line)
                    piece_bytes += len(line)
                    if piece_bytes >= _PIECE_BYTES:
                        _write_all(fd, b"".join(piece))
                        count, written = count + len(piece), written + piece_bytes
                        piece, piece_bytes = [], 0
                if piece:
                    _write_all(fd, b"".join(piece))
                    count, written = count + len(piece), written + piece_bytes
                if count == 0 and events:
                    raise OSError(28, "the spill file is at its size bound")
                os.fsync(fd)
            except OSError:
                # All or none: a half-written batch would be written twice.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        self._spill_size = size + written
        self._spill_lines += count
        self.stats.spilled += count
        log.warning("audit: spilled %d events to %s", count, self._spill)
        return count


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
