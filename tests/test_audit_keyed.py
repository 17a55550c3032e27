"""Keyed audit chains: every verify case on every sink that keeps audit (memory, SQLite, JSONL).

Each test seals a chain through the Service (so under the keyring's audit
key), tampers with the stored trail the way an attacker with database or
file access would, and checks that ``verify_audit`` names that case.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from igris_mw._audit.chain import audit_chain_hash, canonical_json, seal_event
from igris_mw._audit.jsonl import JsonlAuditSink
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.models import AuditEvent
from igris_mw.testing import FixedKeyring, MemoryStore

Raw = list[dict[str, Any]]


class Trail(Protocol):
    """Raw access to one sink's stored events, the way an attacker has it."""

    svc: Service

    def read(self, chain: str) -> Raw: ...

    def write(self, chain: str, events: Raw) -> None: ...

    def drop_head(self, chain: str) -> None: ...


class MemoryTrail:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.svc = Service(self.store, FixedKeyring())

    def read(self, chain: str) -> Raw:
        return [e.to_json() for e in self.store._events.get(chain, [])]

    def write(self, chain: str, events: Raw) -> None:
        self.store._events[chain] = [AuditEvent.from_json(e) for e in events]

    def drop_head(self, chain: str) -> None:
        self.store._heads.pop(chain, None)


class SQLiteTrail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = SQLiteStore(path)
        self.svc = Service(self.store, FixedKeyring())

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None)

    def read(self, chain: str) -> Raw:
        with self._db() as db:
            rows = db.execute(
                "SELECT body FROM audit_events WHERE connection = ? ORDER BY seq", (chain,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def write(self, chain: str, events: Raw) -> None:
        db = self._db()
        try:
            db.execute("DELETE FROM audit_events WHERE connection = ?", (chain,))
            # The row order (the seq column) is where the attacker put each body.
            for position, event in enumerate(events, 1):
                db.execute(
                    "INSERT INTO audit_events (connection, seq, id, timestamp, body)"
                    " VALUES (?, ?, ?, 0, ?)",
                    (chain, position, event["id"], json.dumps(event)),
                )
        finally:
            db.close()

    def drop_head(self, chain: str) -> None:
        db = self._db()
        try:
            db.execute("DELETE FROM audit_heads WHERE chain = ?", (chain,))
        finally:
            db.close()


class JsonlTrail:
    def __init__(self, path: Path) -> None:
        self.sink = JsonlAuditSink(path)
        self.svc = Service(MemoryStore(), FixedKeyring(), audit=self.sink)

    def _all(self) -> Raw:
        lines = self.sink.path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def read(self, chain: str) -> Raw:
        return [e for e in self._all() if e["connection"] == chain]

    def write(self, chain: str, events: Raw) -> None:
        others = [e for e in self._all() if e["connection"] != chain]
        text = "".join(json.dumps(e) + "\n" for e in [*others, *events])
        self.sink.path.write_text(text)
        # An attacker's file is re-read from scratch, as by a new process.
        self.sink._open_sync()

    def drop_head(self, chain: str) -> None:
        doc = json.loads(self.sink.heads_path.read_text())
        doc["heads"] = [h for h in doc["heads"] if h["chain"] != chain]
        self.sink.heads_path.write_text(json.dumps(doc))


@pytest.fixture(params=["memory", "sqlite", "jsonl"])
async def trail(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Trail]:
    made: Trail
    if request.param == "memory":
        made = MemoryTrail()
    elif request.param == "sqlite":
        made = SQLiteTrail(tmp_path / "igris.db")
    else:
        made = JsonlTrail(tmp_path / "audit.jsonl")
    await made.svc.store.open()
    if isinstance(made, JsonlTrail):
        await made.sink.open()
    await made.svc.create_connection(
        {"slug": "ghub", "name": "GitHub", "upstreamUrl": "https://mcp.example/mcp",
         "credential": "tok-1"}
    )
    await made.svc.create_connection(
        {"slug": "other", "name": "Other", "upstreamUrl": "https://mcp.example/mcp",
         "credential": "tok-2"}
    )
    for _ in range(2):
        await made.svc.set_enabled("ghub", False)
        await made.svc.set_enabled("ghub", True)
    yield made
    await made.svc.store.close()


def _problems(report: dict[str, list[str]], chain: str) -> str:
    return "\n".join(report.get(chain, []))


async def test_intact_trail_verifies_and_is_keyed(trail: Trail) -> None:
    """An untouched trail verifies, and every event carries the key id it is MACed under."""
    report = await trail.svc.verify_audit()
    assert all(not p for p in report.values()), report
    events = trail.read("ghub")
    assert len(events) == 5
    assert {e["keyId"] for e in events} == {FixedKeyring().primary_key_id}


async def test_edited_event_is_reported(trail: Trail) -> None:
    """An event edited in place is reported as edited."""
    events = trail.read("ghub")
    events[2]["outcome"] = "denied"
    trail.write("ghub", events)
    text = _problems(await trail.svc.verify_audit(), "ghub")
    assert f"event {events[2]['id']} (seq 3) was edited" in text
    assert not (await trail.svc.verify_audit())["other"]


async def test_removed_event_is_reported(trail: Trail) -> None:
    """An event removed from the middle of a chain is reported missing."""
    events = trail.read("ghub")
    del events[1]
    trail.write("ghub", events)
    text = _problems(await trail.svc.verify_audit("ghub"), "ghub")
    assert "event seq 2 is missing" in text


async def test_swapped_events_are_reported_as_reordered(trail: Trail) -> None:
    """Two events swapped are reported out of order, not as missing or edited."""
    events = trail.read("ghub")
    events[1], events[2] = events[2], events[1]
    trail.write("ghub", events)
    text = _problems(await trail.svc.verify_audit(), "ghub")
    assert "out of order: seq 2" in text
    assert "missing" not in text
    assert "edited" not in text


async def test_last_event_removed_is_reported(trail: Trail) -> None:
    """Cutting the last event off a chain is caught by its signed head."""
    events = trail.read("ghub")
    trail.write("ghub", events[:-1])
    text = _problems(await trail.svc.verify_audit(), "ghub")
    assert "the last 1 event(s) of chain 'ghub' were removed" in text


async def test_whole_chain_removed_is_reported(trail: Trail) -> None:
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


async def test_chain_rehashed_without_the_key_is_reported(trail: Trail) -> None:
    """An edit followed by a recomputed (unkeyed SHA-256) chain is still caught."""
    events = [AuditEvent.from_json(e) for e in trail.read("ghub")]
    events[1] = AuditEvent.from_json({**events[1].to_json(), "outcome": "denied"})
    forged: list[AuditEvent] = []
    previous = None
    for event in events:
        from attrs import evolve

        previous = seal_event(evolve(event, key_id=None), previous)
        forged.append(previous)
    trail.write("ghub", [e.to_json() for e in forged])
    text = _problems(await trail.svc.verify_audit(), "ghub")
    assert "re-hashed without the key" in text or "re-signed without the key" in text
    # The forged chain is internally consistent: only the key gives it away.
    assert forged[-1].hash == hashlib.sha256(
        canonical_json({k: v for k, v in forged[-1].to_json().items() if k != "hash"}).encode()
    ).hexdigest()


async def test_old_master_key_chains_verify_after_rotation(tmp_path: Path) -> None:
    """Events sealed under an older master key still verify once a new key is primary."""
    store = SQLiteStore(tmp_path / "igris.db")
    await store.open()
    try:
        old = Service(store, FixedKeyring("old"))
        await old.create_connection(
            {"slug": "ghub", "name": "G", "upstreamUrl": "https://mcp.example/mcp",
             "credential": "t"}
        )
        new = Service(store, FixedKeyring("new", "old"))
        await store.use_audit_key(await FixedKeyring("new", "old").audit_key())
        await new.set_enabled("ghub", False)
        report = await new.verify_audit()
        assert report == {"ghub": []}
        # Without the old key, its events cannot be checked, and verify says so.
        lost = Service(store, FixedKeyring("new"))
        text = _problems(await lost.verify_audit(), "ghub")
        assert "which is not configured" in text
    finally:
        await store.close()


async def test_unkeyed_sqlite_trail_is_resealed_by_the_migration(tmp_path: Path) -> None:
    """A SQLite trail from before keyed chains is re-sealed under the key and then verifies."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    from igris_mw._sqlite.schema import MIGRATIONS

    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO schema_version (version) VALUES (1)")
    previous = None
    from datetime import UTC, datetime

    for i in range(3):
        event = AuditEvent(
            id=f"evt_{i:028x}", timestamp=datetime(2026, 1, 1, tzinfo=UTC), connection="ghub",
            kind="management", action="update",
        )
        previous = seal_event(event, previous)
        assert previous.hash == audit_chain_hash(previous)
        db.execute(
            "INSERT INTO audit_events (connection, seq, id, timestamp, body) VALUES (?,?,?,?,?)",
            ("ghub", previous.seq, previous.id, 0, json.dumps(previous.to_json())),
        )
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        svc = Service(store, FixedKeyring())
        report = await svc.verify_audit()
        assert report == {"ghub": []}
        chain = await store.audit_chain("ghub")
        assert [e.id for e in chain] == [f"evt_{i:028x}" for i in range(3)]
        assert all(e.key_id == FixedKeyring().primary_key_id for e in chain)
    finally:
        await store.close()




async def test_api_key_changes_form_the_global_chain(trail: Trail) -> None:
    """API-key create and revoke are audited with connection null, in their own verified chain."""
    record, key = await trail.svc.create_api_key({"name": "ci", "scopes": ["mcp"]}, actor="k_adm")
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


async def test_update_records_changes_from_and_to_without_secrets(trail: Trail) -> None:
    """A PATCH event carries from/to for each changed field; a rotation only credentialVersion."""
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
