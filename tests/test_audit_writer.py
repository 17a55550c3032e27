"""Tests for igris_mw._audit.writer (the batch writer and its spill) and event ids."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import attrs

from igris_mw._audit import AuditWriter, new_event_id
from igris_mw.errors import AuditRejected
from igris_mw.models import AuditEvent
from igris_mw.testing.audit_hostile import unwritable_directory


def _event(n: int, connection: str = "conn-a") -> AuditEvent:
    return AuditEvent(
        id=new_event_id(),
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        connection=connection,
        method="POST",
        path="/v1/mcp/conn-a",
        status=200,
        bytes_in=n,
        metadata={"n": n},
    )


class FlakySink:
    """Collects batches; fails while ``down`` is set."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.down = False
        self.calls = 0

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("sink down")
        seen = {e.id for e in self.events}
        self.events.extend(e for e in events if e.id not in seen)


def test_event_ids_are_unique_and_time_ordered() -> None:
    """Event ids differ and sort by creation time (to the ms)."""
    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i.startswith("evt_") for i in ids)


async def test_writer_batches_everything() -> None:
    """Every emitted event reaches the sink, in order."""
    sink = FlakySink()
    writer = AuditWriter(sink, batch_size=50)
    await writer.start()
    events = [_event(i) for i in range(500)]
    for e in events:
        writer.emit(e)
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]
    assert sink.calls < 500  # batched, not one write per event


async def test_writer_waits_for_the_sink_and_loses_nothing() -> None:
    """Events emitted while the sink is down are written once it is back."""
    sink = FlakySink()
    sink.down = True
    writer = AuditWriter(sink, retry_delay=0.01, max_retry_delay=0.02)
    await writer.start()
    events = [_event(i) for i in range(30)]
    for e in events:
        writer.emit(e)
    await asyncio.sleep(0.1)
    assert sink.events == []
    assert writer.pending == 30
    sink.down = False
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]


async def test_writer_spills_past_the_bound_and_replays_in_order(tmp_path: Path) -> None:
    """Past max_pending, events go to a 0600 spill file and are written first later."""
    spill = tmp_path / "spill.jsonl"
    sink = FlakySink()
    sink.down = True
    writer = AuditWriter(
        sink, spill_path=spill, max_pending=10, retry_delay=0.01, max_retry_delay=0.02
    )
    await writer.start()
    events = [_event(i) for i in range(25)]
    for e in events:
        writer.emit(e)
    for _ in range(100):
        if spill.exists():
            break
        await asyncio.sleep(0.01)
    assert writer.pending_in_memory < 25  # moved out of memory
    assert writer.pending == 25
    assert stat.S_IMODE(os.stat(spill).st_mode) == 0o600
    sink.down = False
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]
    assert not spill.exists()


async def test_writer_close_spills_and_next_start_replays(tmp_path: Path) -> None:
    """Events still queued at shutdown survive in the spill file; the next start writes them."""
    spill = tmp_path / "spill.jsonl"
    sink = FlakySink()
    sink.down = True
    writer = AuditWriter(sink, spill_path=spill, retry_delay=0.01, max_retry_delay=0.02)
    await writer.start()
    events = [_event(i) for i in range(5)]
    for e in events:
        writer.emit(e)
    await writer.aclose(timeout=0.05)
    assert spill.exists()
    sink.down = False
    writer2 = AuditWriter(sink, spill_path=spill)
    await writer2.start()
    assert await writer2.flush(5)
    await writer2.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]
    assert sink.events[0].metadata == {"n": 0}


class StuckSink:
    """An append that never returns and shrugs off cancellation (a wedged driver)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.events: list[AuditEvent] = []

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        self.calls += 1
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue
        self.events.extend(events)


async def test_close_is_bounded_when_the_sink_ignores_cancellation(tmp_path: Path) -> None:
    """aclose(timeout) returns within the bound even if the sink never gives way; all is spilled."""
    spill = tmp_path / "spill.jsonl"
    sink = StuckSink()
    writer = AuditWriter(sink, spill_path=spill, linger=0)
    await writer.start()
    events = [_event(i) for i in range(7)]
    for e in events:
        writer.emit(e)
    await asyncio.sleep(0.05)
    assert sink.calls == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(writer.aclose(timeout=0.5), 5)
    assert loop.time() - started < 1.0
    lines = spill.read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [e.id for e in events]
    # The abandoned append finishing late must not touch the (spilled) queue.
    sink.release.set()
    await asyncio.sleep(0.05)
    assert writer.pending_in_memory == 0
    assert writer.pending == 7  # in the spill, for the next start


async def test_close_uses_close_timeout_by_default() -> None:
    """With no timeout given, aclose is bounded by the writer's close_timeout."""
    sink = StuckSink()
    writer = AuditWriter(sink, close_timeout=0.3, linger=0)
    await writer.start()
    writer.emit(_event(1))
    await asyncio.sleep(0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(writer.aclose(), 5)
    assert loop.time() - started < 0.8
    sink.release.set()  # let the abandoned task end before the test's loop does
    await asyncio.sleep(0.02)


async def test_a_spill_load_cut_short_keeps_its_events(tmp_path: Path) -> None:
    """A spill left half-loaded (shutdown mid-read) is read first at the next start."""
    spill = tmp_path / "spill.jsonl"
    loading = tmp_path / "spill.jsonl.loading"
    older, newer = [_event(i) for i in range(3)], [_event(i) for i in range(3, 5)]
    loading.write_text("".join(json.dumps(e.to_json()) + "\n" for e in older))
    spill.write_text("".join(json.dumps(e.to_json()) + "\n" for e in newer))
    sink = FlakySink()
    writer = AuditWriter(sink, spill_path=spill)
    await writer.start()
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in older + newer]
    assert not loading.exists()
    assert not spill.exists()


async def test_close_spills_into_a_directory_not_made_yet(tmp_path: Path) -> None:
    """The spill file's directory is created (0700) when missing, so nothing is lost at close."""
    spill = tmp_path / "not-yet" / "spill.jsonl"
    sink = FlakySink()
    sink.down = True
    writer = AuditWriter(sink, spill_path=spill, retry_delay=0.01, max_retry_delay=0.02)
    await writer.start()
    events = [_event(i) for i in range(3)]
    for e in events:
        writer.emit(e)
    await writer.aclose(timeout=0.1)
    assert [json.loads(x)["id"] for x in spill.read_text().splitlines()] == [e.id for e in events]
    assert stat.S_IMODE(spill.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(spill.stat().st_mode) == 0o600


class RecordingSink:
    """Keeps every event once (by id, as stores do) and every batch it was sent.

    ``down``: raises ConnectionRefusedError (an outage). ``refuse``: event ids
    it rejects as bad data (AuditRejected), the way Postgres refuses a NUL.
    """

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.events: list[AuditEvent] = []
        self.batches: list[list[str]] = []
        self.down = False
        self.refuse = refuse or set()
        self.memory_seen: list[int] = []
        self.writer: AuditWriter | None = None

    async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
        if self.down:
            raise ConnectionRefusedError("sink down")
        self.batches.append([e.id for e in events])
        if self.writer is not None:
            self.memory_seen.append(self.writer.pending_in_memory)
        if any(e.id in self.refuse for e in events):
            raise AuditRejected("text fields cannot contain NUL (0x00) bytes")
        seen = {e.id for e in self.events}
        self.events.extend(e for e in events if e.id not in seen)


async def _until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_a_refused_event_is_quarantined_and_the_rest_written_in_order(
    tmp_path: Path,
) -> None:
    """One event of a batch of 100 refused: 99 stored in order, 1 quarantined (0600, reason)."""
    events = [_event(i) for i in range(100)]
    bad = events[37]
    sink = RecordingSink(refuse={bad.id})
    writer = AuditWriter(sink, spill_path=tmp_path / "spill.jsonl", batch_size=100)
    for e in events:
        writer.emit(e)
    await writer.start()
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events if e is not bad]
    assert writer.stats.quarantined == 1
    assert writer.stats.written == 99
    quarantine = tmp_path / "audit-quarantine.jsonl"
    assert stat.S_IMODE(quarantine.stat().st_mode) == 0o600
    (line,) = quarantine.read_text().splitlines()
    record = json.loads(line)
    assert record["event"]["id"] == bad.id
    assert "NUL" in record["reason"]
    assert len(sink.batches) < 20  # found by halving, not one append per event


async def test_an_outage_is_retried_not_quarantined() -> None:
    """A sink that is down (connection refused) makes the batch wait; nothing is quarantined."""
    sink = RecordingSink()
    sink.down = True
    writer = AuditWriter(sink, retry_delay=0.01, max_retry_delay=0.02)
    await writer.start()
    events = [_event(i) for i in range(50)]
    for e in events:
        writer.emit(e)
    await asyncio.sleep(0.1)
    assert writer.stats.failures >= 2
    sink.down = False
    assert await writer.flush(5)
    await writer.aclose()
    assert writer.stats.quarantined == 0
    assert [e.id for e in sink.events] == [e.id for e in events]


async def test_the_spill_is_read_back_one_batch_at_a_time(tmp_path: Path) -> None:
    """A large spill is written back in batches from the file, never loaded into memory whole."""
    spill = tmp_path / "spill.jsonl"
    sink = RecordingSink()
    sink.down = True
    writer = AuditWriter(
        sink, spill_path=spill, max_pending=10, batch_size=100, retry_delay=0.01,
        max_retry_delay=0.02,
    )  # fmt: skip
    sink.writer = writer
    await writer.start()
    events = [_event(i) for i in range(3000)]
    for e in events:
        writer.emit(e)
    await _until(lambda: writer.pending_in_memory <= 10)
    assert writer.pending == 3000
    sink.down = False
    assert await writer.flush(10)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]
    assert max(len(b) for b in sink.batches) <= 100
    assert max(sink.memory_seen) <= 10
    assert not spill.exists()
    assert not (tmp_path / "spill.jsonl.cursor").exists()


async def test_the_spill_cursor_survives_a_restart(tmp_path: Path) -> None:
    """A spill partly written when the writer stops resumes after what was written, not before."""
    spill = tmp_path / "spill.jsonl"
    events = [_event(i) for i in range(300)]
    spill.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))

    class FailsAfterOne(RecordingSink):
        async def append_audit_events(self, batch: Sequence[AuditEvent]) -> None:
            if len(self.batches) >= 1:
                self.down = True
            await super().append_audit_events(batch)

    first = FailsAfterOne()
    writer = AuditWriter(first, spill_path=spill, batch_size=100, retry_delay=0.01)
    await writer.start()
    await _until(lambda: writer.stats.failures > 0)
    await writer.aclose(timeout=0.2)
    assert int((tmp_path / "spill.jsonl.cursor").read_text()) > 0
    second = RecordingSink()
    writer2 = AuditWriter(second, spill_path=spill, batch_size=100)
    assert writer2.pending == 0
    await writer2.start()
    assert writer2.pending == 200
    assert await writer2.flush(5)
    await writer2.aclose()
    assert [e.id for e in first.events + second.events] == [e.id for e in events]
    assert not spill.exists()


async def test_an_unwritable_spill_keeps_the_events_and_fails_closed(tmp_path: Path) -> None:
    """Sink down and spill unwritable: nothing leaves memory, failing_closed; then all recover."""
    spill_dir = tmp_path / "spill"
    sink = RecordingSink()
    sink.down = True
    with unwritable_directory(spill_dir) as make_writable:
        writer = AuditWriter(
            sink, spill_path=spill_dir / "spill.jsonl", max_pending=5, retry_delay=0.01,
            max_retry_delay=0.02,
        )  # fmt: skip
        await writer.start()
        events = [_event(i) for i in range(20)]
        for e in events:
            writer.emit(e)
        await _until(lambda: writer.failing_closed)
        assert writer.saturated
        assert writer.pending == 20  # nothing lost, nothing removed from memory
        make_writable()
        await _until(lambda: not writer.failing_closed)
        assert writer.pending_in_memory == 0  # spilled now
        sink.down = False
        assert await writer.flush(5)
        await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]


async def test_a_spill_at_its_size_bound_fails_closed_until_the_sink_is_back(
    tmp_path: Path,
) -> None:
    """Past max_spill_bytes the writer fails closed; once the sink is back all is written once."""
    sink = RecordingSink()
    sink.down = True
    writer = AuditWriter(
        sink, spill_path=tmp_path / "spill.jsonl", max_pending=5, max_spill_bytes=4000,
        retry_delay=0.01, max_retry_delay=0.02,
    )  # fmt: skip
    await writer.start()
    events = [_event(i) for i in range(40)]
    for e in events:
        writer.emit(e)
    await _until(lambda: writer.failing_closed)
    assert (tmp_path / "spill.jsonl").stat().st_size <= 4000
    assert writer.pending == 40
    sink.down = False
    await _until(lambda: not writer.failing_closed)
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]


async def test_without_a_spill_file_memory_is_the_bound() -> None:
    """No spill file: past max_pending with the sink down, the writer fails closed."""
    sink = RecordingSink()
    sink.down = True
    writer = AuditWriter(sink, max_pending=5, retry_delay=0.01, max_retry_delay=0.02)
    await writer.start()
    for i in range(6):
        writer.emit(_event(i))
    await _until(lambda: writer.failing_closed)
    sink.down = False
    assert await writer.flush(5)
    assert not writer.failing_closed
    await writer.aclose()
    assert len(sink.events) == 6


async def test_fail_open_drops_and_counts_past_the_bound() -> None:
    """failure='open': requests are never refused; events past the bound are dropped, counted."""
    sink = RecordingSink()
    sink.down = True
    writer = AuditWriter(
        sink, max_pending=5, failure="open", retry_delay=0.01, max_retry_delay=0.02
    )
    await writer.start()
    for i in range(12):
        writer.emit(_event(i))
    await _until(lambda: writer.saturated)
    assert not writer.failing_closed
    assert writer.stats.dropped == 7
    sink.down = False
    assert await writer.flush(5)
    await writer.aclose()
    assert len(sink.events) == 5


async def test_an_unsafe_event_from_elsewhere_is_stored_in_its_safe_form() -> None:
    """An event emitted without being made safe, refused for it, is stored escaped, not lost."""

    class NoNul(RecordingSink):
        async def append_audit_events(self, events: Sequence[AuditEvent]) -> None:
            if any("\x00" in (e.path or "") for e in events):
                raise AuditRejected("text fields cannot contain NUL (0x00) bytes")
            await super().append_audit_events(events)

    sink = NoNul()
    writer = AuditWriter(sink)
    events = [_event(i) for i in range(10)]
    events[4] = attrs.evolve(events[4], path="/v1/mcp/conn-a/\x00")
    for e in events:
        writer.emit(e)
    await writer.start()
    assert await writer.flush(5)
    await writer.aclose()
    assert [e.id for e in sink.events] == [e.id for e in events]
    assert sink.events[4].path == "/v1/mcp/conn-a/\\x00"
    assert writer.stats.quarantined == 0
    assert writer.stats.escaped == 1
