"""Storage suite: keyed chains, signed heads and the global chain (issue 10)."""

from __future__ import annotations

from typing import Any

import pytest

from .._audit.chain import audit_chain_hash, check_heads, derive_audit_key, digest_of
from .._errors import ValidationError
from ..models import AuditEvent
from ..storage import AuditQuery, Store, verify_chain
from ._suite_base import SuiteBase
from ._suite_data import at, make_event

__all__ = ["AuditKeyTests"]

_KEY = derive_audit_key("suite-key", b"the storage suite's audit key material")


class AuditKeyTests(SuiteBase):
    """``use_audit_key``, ``audit_heads`` and events with ``connection=None``."""

    async def test_audit_events_are_macd_under_the_audit_key(self, audit_store: Store) -> None:
        """After use_audit_key every new event is an HMAC under the key and names it."""
        await audit_store.use_audit_key(_KEY)
        await audit_store.append_audit_events([make_event("keyed", i) for i in range(3)])
        chain = await audit_store.audit_chain("keyed")
        assert [e.key_id for e in chain] == ["suite-key"] * 3
        assert all(e.hash == audit_chain_hash(e, _KEY) for e in chain)
        assert verify_chain(chain, keys={"suite-key": _KEY}) == []

    async def test_audit_heads_follow_every_batch(self, audit_store: Store) -> None:
        """Each chain's signed head is its last event; the anchor covers every head."""
        await audit_store.use_audit_key(_KEY)
        await audit_store.append_audit_events([make_event("one", 0), make_event("two", 1)])
        await audit_store.append_audit_events([make_event("one", 2), make_event("one", 3)])
        heads, anchor = await audit_store.audit_heads()
        one = await audit_store.audit_chain("one")
        two = await audit_store.audit_chain("two")
        assert (heads["one"].seq, heads["one"].hash) == (3, one[-1].hash)
        assert (heads["two"].seq, heads["two"].hash) == (1, two[-1].hash)
        assert anchor is not None
        assert anchor.chains == 2
        assert anchor.digest == digest_of(heads.values())
        last: dict[str | None, AuditEvent | None] = {"one": one[-1], "two": two[-1]}
        assert check_heads(last, heads, anchor, {"suite-key": _KEY}) == {}

    async def test_global_chain_holds_events_about_no_connection(self, audit_store: Store) -> None:
        """Events with connection None form their own chain, listed but not a slug."""
        await audit_store.use_audit_key(_KEY)
        events = [
            make_event(
                None,
                i,
                kind="management",
                action="create",
                changes={"name": {"from": None, "to": f"k{i}"}},
            )
            for i in range(3)
        ]
        await audit_store.append_audit_events([*events, make_event("conn", 9)])
        chain = await audit_store.audit_chain(None)
        assert [(e.seq, e.connection) for e in chain] == [(1, None), (2, None), (3, None)]
        assert chain[0].changes == {"name": {"from": None, "to": "k0"}}
        assert verify_chain(chain, keys={"suite-key": _KEY}) == []
        page = await audit_store.list_audit_events(None, limit=2)
        assert [e.seq for e in page.items] == [3, 2]
        assert page.next_cursor is not None
        rest = await audit_store.list_audit_events(None, limit=2, cursor=page.next_cursor)
        assert [e.seq for e in rest.items] == [1]
        assert await audit_store.audit_connections() == ["conn"]
        heads, _ = await audit_store.audit_heads()
        assert heads[None].seq == 3

    async def test_list_all_audit_events_newest_first_with_filters(
        self, audit_store: Store
    ) -> None:
        """The whole-trail listing: every chain by id, newest first, paged and filtered."""
        events = [
            make_event("one", 0, id="evt_01", user="alice"),
            make_event(None, 1, id="evt_02", kind="management", action="create"),
            make_event("two", 2, id="evt_03", outcome="denied"),
            make_event("one", 3, id="evt_04", user="bob"),
        ]
        await audit_store.append_audit_events(events)
        page = await audit_store.list_all_audit_events(AuditQuery(), limit=3)
        assert [e.id for e in page.items] == ["evt_04", "evt_03", "evt_02"]
        assert page.next_cursor is not None
        rest = await audit_store.list_all_audit_events(
            AuditQuery(), limit=3, cursor=page.next_cursor
        )
        assert [e.id for e in rest.items] == ["evt_01"]
        assert rest.next_cursor is None

        async def ids(**query: Any) -> list[str]:
            found = await audit_store.list_all_audit_events(AuditQuery(**query), limit=50)
            return [e.id for e in found.items]

        assert await ids(slug="one") == ["evt_04", "evt_01"]
        assert await ids(kind="management") == ["evt_02"]
        assert await ids(action="create") == ["evt_02"]
        assert await ids(outcome="denied") == ["evt_03"]
        assert await ids(user="alice") == ["evt_01"]
        assert await ids(since=at(2)) == ["evt_04", "evt_03"]
        assert await ids(slug="one", user="bob") == ["evt_04"]
        with pytest.raises(ValidationError):
            await audit_store.list_all_audit_events(AuditQuery(), cursor="bogus!")
