"""The storage suite: the audit trail and its hash chains.

Skipped for a store whose ``capabilities.audit`` is false.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

import pytest

from .._errors import ValidationError
from ..models import AuditEvent
from ..storage import Store, verify_chain
from ._suite_base import SuiteBase
from ._suite_data import at, make_connection, make_event, unsealed

__all__ = ["AuditTests"]


class AuditTests(SuiteBase):
    """Appending, sealing, listing and verifying audit events."""

    # -- audit -------------------------------------------------------------
    async def test_audit_batch_forms_a_valid_chain(self, audit_store: Store) -> None:
        """An appended batch is sealed into a valid chain with seq 1..n, events intact."""
        events = [make_event("chain", i, user=f"u{i}", metadata={"i": i}) for i in range(5)]
        await audit_store.append_audit_events(events)
        chain = await audit_store.audit_chain("chain")
        assert [e.seq for e in chain] == [1, 2, 3, 4, 5]
        assert verify_chain(chain) == []
        assert [unsealed(e) for e in chain] == events

    async def test_audit_chain_continues_across_batches(self, audit_store: Store) -> None:
        """A later batch chains onto the last stored event of each connection separately."""
        await audit_store.append_audit_events([make_event("one", 0), make_event("two", 1)])
        await audit_store.append_audit_events(
            [make_event("one", 2), make_event("two", 3), make_event("one", 4)]
        )
        one = await audit_store.audit_chain("one")
        two = await audit_store.audit_chain("two")
        assert [e.seq for e in one] == [1, 2, 3]
        assert [e.seq for e in two] == [1, 2]
        assert verify_chain(one) == []
        assert verify_chain(two) == []
        assert await audit_store.audit_connections() == ["one", "two"]

    async def test_audit_event_fields_round_trip(self, audit_store: Store) -> None:
        """Every audit field survives storage, and a microsecond timestamp keeps the chain valid."""
        event = make_event(
            "fields",
            kind="management",
            action="rotate",
            user="alice@example.com",
            metadata={"role": "dev", "nested": {"a": [1, 2.5, None, True]}, "ü": "✓"},
            outcome="denied",
            status=403,
            latency_ms=0.25,
            credential_version=None,
            timestamp=at(7) + timedelta(microseconds=123),
        )
        bare = make_event(
            "fields",
            8,
            api_key_id=None,
            method=None,
            path=None,
            rpc_method=None,
            tool=None,
            status=None,
            latency_ms=None,
        )
        await audit_store.append_audit_events([event, bare])
        chain = await audit_store.audit_chain("fields")
        assert verify_chain(chain) == []
        stored, stored_bare = chain
        assert stored.to_json() | {"seq": 0, "prevHash": None, "hash": None} == event.to_json()
        assert unsealed(stored_bare) == bare

    async def test_audit_duplicate_ids_are_no_ops(self, audit_store: Store) -> None:
        """Re-appending events whose ids are stored (or repeated in a batch) adds nothing."""
        events = [make_event("dupe", i) for i in range(3)]
        await audit_store.append_audit_events(events)
        before = await audit_store.audit_chain("dupe")
        extra = make_event("dupe", 9)
        await audit_store.append_audit_events([*events, extra, extra])
        after = await audit_store.audit_chain("dupe")
        assert after[:3] == before
        assert [e.id for e in after] == [*(e.id for e in events), extra.id]
        assert verify_chain(after) == []

    async def test_audit_listed_newest_first_with_cursor(self, audit_store: Store) -> None:
        """list_audit_events pages newest first through every event, once each."""
        events = [make_event("paged", i) for i in range(7)]
        await audit_store.append_audit_events(events)
        await audit_store.append_audit_events([make_event("other", 0)])
        seen: list[AuditEvent] = []
        cursor: str | None = None
        while True:
            page = await audit_store.list_audit_events("paged", limit=3, cursor=cursor)
            seen.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [e.seq for e in seen] == [7, 6, 5, 4, 3, 2, 1]
        assert [e.id for e in seen] == [e.id for e in reversed(events)]

    async def test_audit_since_filter(self, audit_store: Store) -> None:
        """since keeps only events at or after the given time."""
        await audit_store.append_audit_events([make_event("since", i * 1000) for i in range(5)])
        page = await audit_store.list_audit_events("since", since=at(2000))
        assert [e.timestamp for e in page.items] == [at(4000), at(3000), at(2000)]
        later = await audit_store.list_audit_events("since", since=at(10_000))
        assert later.items == []
        assert later.next_cursor is None

    async def test_audit_list_of_unknown_connection_is_empty(self, audit_store: Store) -> None:
        """A connection without events lists an empty page and an empty chain."""
        page = await audit_store.list_audit_events("silent")
        assert page.items == []
        assert page.next_cursor is None
        assert await audit_store.audit_chain("silent") == []

    @pytest.mark.parametrize(
        "cursor", ["garbage", "!!!", base64.urlsafe_b64encode(b"junk").decode()]
    )
    async def test_audit_foreign_cursor_raises_validation_error(
        self, audit_store: Store, cursor: str
    ) -> None:
        """An audit cursor the store did not make raises ValidationError naming 'cursor'."""
        await audit_store.append_audit_events([make_event("cur", 0)])
        with pytest.raises(ValidationError) as info:
            await audit_store.list_audit_events("cur", cursor=cursor)
        assert info.value.field == "cursor"

    async def test_audit_chain_after_seq_and_limit(self, audit_store: Store) -> None:
        """audit_chain returns events after a seq, oldest first, at most limit of them."""
        await audit_store.append_audit_events([make_event("tail", i) for i in range(6)])
        tail = await audit_store.audit_chain("tail", after_seq=2, limit=3)
        assert [e.seq for e in tail] == [3, 4, 5]
        full = await audit_store.audit_chain("tail")
        assert verify_chain(tail, previous=full[1]) == []

    async def test_audit_stays_after_delete(self, audit_store: Store) -> None:
        """Deleting a connection keeps its audit trail."""
        await audit_store.create_connection(make_connection("kept"))
        await audit_store.append_audit_events([make_event("kept", 0), make_event("kept", 1)])
        await audit_store.delete_connection("kept")
        assert len(await audit_store.audit_chain("kept")) == 2
        assert "kept" in await audit_store.audit_connections()

    async def test_concurrent_appenders_keep_one_chain(self, audit_store: Store) -> None:
        """Concurrent appends to one connection give unique seqs and a valid chain."""
        n = self.concurrent_writers
        batches = [[make_event("busy", i * 10 + j) for j in range(5)] for i in range(n)]
        await asyncio.gather(*(audit_store.append_audit_events(b) for b in batches))
        chain = await audit_store.audit_chain("busy", limit=10_000)
        assert [e.seq for e in chain] == list(range(1, 5 * n + 1))
        assert verify_chain(chain) == []

    async def test_concurrent_appenders_on_two_objects(
        self, audit_store: Store, peer: Store
    ) -> None:
        """Appends racing through two store objects on the same data keep one valid chain."""
        n = self.concurrent_writers
        batches = [[make_event("both", i * 10 + j) for j in range(5)] for i in range(n)]
        await asyncio.gather(
            *(
                (audit_store if i % 2 else peer).append_audit_events(b)
                for i, b in enumerate(batches)
            )
        )
        chain = await audit_store.audit_chain("both", limit=10_000)
        assert [e.seq for e in chain] == list(range(1, 5 * n + 1))
        assert verify_chain(chain) == []
