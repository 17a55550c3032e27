"""Tests for igris_mw._audit: the JSON-RPC peek and the batch writer."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from igris_mw._audit import AuditWriter, new_event_id, peek_jsonrpc
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


def test_peek_single_request() -> None:
    """A tools/call request gives its method and tool name."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {}},
        }
    ).encode()
    assert peek_jsonrpc(body, complete=True) == ("tools/call", "echo")


def test_peek_batch_lists_distinct_methods_and_tools() -> None:
    """A JSON-RPC batch gives its distinct methods and tools, in order."""
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "b"}},
        ]
    ).encode()
    assert peek_jsonrpc(body, complete=True) == ("tools/call,tools/list", "a,b")


def test_peek_truncated_body_uses_bounded_scan() -> None:
    """A body longer than the peek still yields the method from its prefix."""
    prefix = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"x":"'
    )
    assert peek_jsonrpc(prefix + b"a" * 100, complete=False) == ("tools/call", "big")


def test_peek_non_json_is_none() -> None:
    """A body that is not JSON gives no method and never raises."""
    assert peek_jsonrpc(b"\xff\x00not json", complete=True) == (None, None)
    assert peek_jsonrpc(b"", complete=True) == (None, None)
    assert peek_jsonrpc(b"[" * 100_000, complete=True) == (None, None)


@given(st.binary(max_size=2048), st.booleans())
def test_peek_never_raises(body: bytes, complete: bool) -> None:
    """Any bytes at all: the peek returns, it never fails the request."""
    method, tool = peek_jsonrpc(body, complete=complete)
    assert method is None or isinstance(method, str)
    assert tool is None or isinstance(tool, str)


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
