"""Tests for igris_mw._audit.writer (the batch writer and its spill) and event ids."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from igris_mw._audit import AuditWriter, new_event_id
from igris_mw.models import AuditEvent


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
    assert writer.pending < 25  # moved out of memory
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
    assert writer.pending == 0


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
