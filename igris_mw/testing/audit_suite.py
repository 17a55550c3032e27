"""The audit tamper suite: every case ``audit verify`` must catch, on one sink.

A backend's test module subclasses ``AuditTamperSuite`` under a ``Test*``
name and implements ``make_trail``: a ``Trail`` gives the suite a Service
writing to the sink under test and raw access to what the sink stores (the
access an attacker with the database or the file has). The suite seals a
chain through the Service, tampers with it, and checks that
``Service.verify_audit`` names the case: an event edited, removed or
reordered, the last event removed, a chain removed whole (with and without
its signed head), a chain re-hashed without the key; and that the global
chain (API-key changes) and ``changes`` on updates are recorded and verify.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import attrs
import pytest

from .._audit.chain import canonical_json, seal_event
from .._service import Service
from ..models import AuditEvent
from ._fixed_keyring import FixedKeyring

__all__ = ["AuditTamperSuite", "Raw", "Trail", "service_for"]

Raw = list[dict[str, Any]]


class Trail(Protocol):
    """A Service on the sink under test, and raw access to its stored events."""

    svc: Service

    def read(self, chain: str) -> Raw:
        """The chain's stored events (``to_json()`` form) in stored order."""
        ...

    def write(self, chain: str, events: Raw) -> None:
        """Replace the chain's stored events with ``events``, in that order."""
        ...

    def drop_head(self, chain: str) -> None:
        """Remove the chain's signed head."""
        ...

    def swap(self, chain: str, i: int, j: int) -> None:
        """Swap the events at positions ``i`` and ``j`` the way the sink orders
        them (list or file positions; for a sink ordered by its ``seq``
        column, the two rows' seqs)."""
        ...

    async def close(self) -> None: ...


def service_for(store: Any, audit: Any = None) -> Service:
    """The management Service the suite drives: ``store``, ``FixedKeyring()``,
    and ``audit`` as its sink (default: the store)."""
    return Service(store, FixedKeyring(), audit=audit)


def _problems(report: dict[str, list[str]], chain: str) -> str:
    return "\n".join(report.get(chain, []))


class AuditTamperSuite:
    """Inherit under a ``Test*`` name and implement ``make_trail``."""

    tmp_path: Path

    async def make_trail(self) -> Trail:
        """A fresh trail (opened sink, empty) whose Service uses ``FixedKeyring()``."""
        raise NotImplementedError("an AuditTamperSuite subclass must implement make_trail")

    @pytest.fixture
    async def trail(self, tmp_path: Path) -> AsyncIterator[Trail]:
        self.tmp_path = tmp_path
        made = await self.make_trail()
        try:
            await made.svc.create_connection(
                {
                    "slug": "ghub",
                    "name": "GitHub",
                    "upstreamUrl": "https://mcp.example/mcp",
                    "credential": "tok-1",
                }
            )
            await made.svc.create_connection(
                {
                    "slug": "other",
                    "name": "Other",
                    "upstreamUrl": "https://mcp.example/mcp",
                    "credential": "tok-2",
                }
            )
            for _ in range(2):
                await made.svc.set_enabled("ghub", False)
                await made.svc.set_enabled("ghub", True)
            yield made
        finally:
            await made.close()

    async def test_intact_trail_verifies_and_is_keyed(self, trail: Trail) -> None:
        """An untouched trail verifies, and every event carries the key id it is MACed under."""
        report = await trail.svc.verify_audit()
        assert all(not p for p in report.values()), report
        events = trail.read("ghub")
        assert len(events) == 5
        assert {e["keyId"] for e in events} == {FixedKeyring().primary_key_id}

    async def test_edited_event_is_reported(self, trail: Trail) -> None:
        """An event edited in place is reported as edited."""
        events = trail.read("ghub")
        events[2]["outcome"] = "denied"
        trail.write("ghub", events)
        text = _problems(await trail.svc.verify_audit(), "ghub")
        assert f"event {events[2]['id']} (seq 3) was edited" in text
        assert not (await trail.svc.verify_audit())["other"]

    async def test_removed_event_is_reported(self, trail: Trail) -> None:
        """An event removed from the middle of a chain is reported missing."""
        events = trail.read("ghub")
        del events[1]
        trail.write("ghub", events)
        text = _problems(await trail.svc.verify_audit("ghub"), "ghub")
        assert "event seq 2 is missing" in text

    async def test_swapped_events_are_reported_as_reordered(self, trail: Trail) -> None:
        """Two events swapped are reported out of order, not as missing or edited."""
        trail.swap("ghub", 1, 2)
        text = _problems(await trail.svc.verify_audit(), "ghub")
        assert "out of order: seq 2" in text
        assert "missing" not in text
        assert "edited" not in text

    async def test_last_event_removed_is_reported(self, trail: Trail) -> None:
        """Cutting the last event off a chain is caught by its signed head."""
        events = trail.read("ghub")
        trail.write("ghub", events[:-1])
        text = _problems(await trail.svc.verify_audit(), "ghub")
        assert "the last 1 event(s) of chain 'ghub' were removed" in text

    async def test_whole_chain_removed_is_reported(self, trail: Trail) -> None:
        """A chain removed whole is caught by its head; with its head too, by the anchor."""
        trail.write("ghub", [])
        report = await trail.svc.verify_audit()
        assert "chain 'ghub' was removed whole" in _problems(report, "ghub")
        trail.drop_head("ghub")
        report = await trail.svc.verify_audit()
        assert "1 chain(s) were removed whole together with their signed heads" in _problems(
            report, "(heads)"
        )
        assert not report["other"]

    async def test_chain_rehashed_without_the_key_is_reported(self, trail: Trail) -> None:
        """An edit followed by a recomputed (unkeyed SHA-256) chain is still caught."""
        events = [AuditEvent.from_json(e) for e in trail.read("ghub")]
        events[1] = AuditEvent.from_json({**events[1].to_json(), "outcome": "denied"})
        forged: list[AuditEvent] = []
        previous = None
        for event in events:
            previous = seal_event(attrs.evolve(event, key_id=None), previous)
            forged.append(previous)
        trail.write("ghub", [e.to_json() for e in forged])
        text = _problems(await trail.svc.verify_audit(), "ghub")
        assert "re-hashed without the key" in text or "re-signed without the key" in text
        # The forged chain is internally consistent: only the key gives it away.
        assert (
            forged[-1].hash
            == hashlib.sha256(
                canonical_json(
                    {k: v for k, v in forged[-1].to_json().items() if k != "hash"}
                ).encode()
            ).hexdigest()
        )

    async def test_api_key_changes_form_the_global_chain(self, trail: Trail) -> None:
        """API-key create and revoke are audited with connection null, in a verified chain."""
        body = {"name": "ci", "scopes": ["mcp"]}
        record, key = await trail.svc.create_api_key(body, actor="k_adm")
        await trail.svc.revoke_api_key(record.id, actor="k_adm")
        events = await trail.svc.audit.audit_chain(None)
        assert [(e.action, e.connection, e.seq) for e in events] == [
            ("create", None, 1),
            ("revoke", None, 2),
        ]
        assert events[1].changes is not None
        assert events[1].changes["revokedAt"]["from"] is None
        assert key not in json.dumps([e.to_json() for e in events])
        report = await trail.svc.verify_audit()
        assert report["(global)"] == []
        assert all(not p for p in report.values()), report

    async def test_update_records_changes_from_and_to_without_secrets(self, trail: Trail) -> None:
        """A PATCH event carries from/to per changed field; a rotation only credentialVersion."""
        await trail.svc.update_connection("ghub", {"upstreamUrl": "https://evil.example/mcp"})
        await trail.svc.rotate_credential("ghub", "canary-new-secret")
        events = await trail.svc.audit.audit_chain("ghub")
        update, rotate = events[-2], events[-1]
        assert update.changes == {
            "upstreamUrl": {"from": "https://mcp.example/mcp", "to": "https://evil.example/mcp"}
        }
        assert rotate.changes == {"credentialVersion": {"from": 1, "to": 2}}
        assert "canary-new-secret" not in json.dumps([e.to_json() for e in events])
        assert not (await trail.svc.verify_audit())["ghub"]
