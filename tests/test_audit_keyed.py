"""Keyed audit chains: the tamper suite on the memory, SQLite and JSON-lines sinks,
key rotation, and the migration that re-seals an unkeyed trail."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._audit.chain import audit_chain_hash, seal_event
from igris_mw._audit.jsonl import JsonlAuditSink
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.models import AuditEvent
from igris_mw.testing import FixedKeyring, MemoryStore
from igris_mw.testing.audit_suite import AuditTamperSuite, Raw, Trail


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

    def swap(self, chain: str, i: int, j: int) -> None:
        events = self.read(chain)
        events[i], events[j] = events[j], events[i]
        self.write(chain, events)

    async def close(self) -> None:
        await self.store.close()


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

    def swap(self, chain: str, i: int, j: int) -> None:
        events = self.read(chain)
        events[i], events[j] = events[j], events[i]
        self.write(chain, events)

    async def close(self) -> None:
        await self.store.close()


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

    def swap(self, chain: str, i: int, j: int) -> None:
        events = self.read(chain)
        events[i], events[j] = events[j], events[i]
        self.write(chain, events)

    async def close(self) -> None:
        await self.sink.close()


class TestMemoryTrail(AuditTamperSuite):
    async def make_trail(self) -> Trail:
        return MemoryTrail()


class TestSQLiteTrail(AuditTamperSuite):
    async def make_trail(self) -> Trail:
        made = SQLiteTrail(self.tmp_path / "igris.db")
        await made.store.open()
        return made


class TestJsonlTrail(AuditTamperSuite):
    async def make_trail(self) -> Trail:
        made = JsonlTrail(self.tmp_path / "audit.jsonl")
        await made.sink.open()
        return made


async def test_old_master_key_chains_verify_after_rotation(tmp_path: Path) -> None:
    """Events sealed under an older master key still verify once a new key is primary."""
    store = SQLiteStore(tmp_path / "igris.db")
    await store.open()
    try:
        old = Service(store, FixedKeyring("old"))
        await old.create_connection(
            {
                "slug": "ghub",
                "name": "G",
                "upstreamUrl": "https://mcp.example/mcp",
                "credential": "t",
            }
        )
        new = Service(store, FixedKeyring("new", "old"))
        await store.use_audit_key(await FixedKeyring("new", "old").audit_key())
        await new.set_enabled("ghub", False)
        report = await new.verify_audit()
        assert report == {"ghub": []}
        # Without the old key, its events cannot be checked, and verify says so.
        lost = Service(store, FixedKeyring("new"))
        text = "\n".join((await lost.verify_audit())["ghub"])
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
            id=f"evt_{i:028x}",
            timestamp=datetime(2026, 1, 1, tzinfo=UTC),
            connection="ghub",
            kind="management",
            action="update",
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


def _unkeyed_chain(slug: str, n: int) -> list[AuditEvent]:
    from datetime import UTC, datetime

    out: list[AuditEvent] = []
    previous = None
    for i in range(n):
        event = AuditEvent(
            id=f"evt_{slug}{i:020x}", timestamp=datetime(2026, 1, 1, tzinfo=UTC),
            connection=slug, kind="management", action="update",
        )  # fmt: skip
        previous = seal_event(event, previous)
        out.append(previous)
    return out


async def test_unkeyed_jsonl_file_is_resealed_once(tmp_path: Path) -> None:
    """A JSON-lines file from before keyed chains is re-sealed under the key, then verifies."""
    path = tmp_path / "audit.jsonl"
    events = _unkeyed_chain("ghub", 3) + _unkeyed_chain("other", 2)
    path.write_text("".join(json.dumps(e.to_json()) + "\n" for e in events))
    sink = JsonlAuditSink(path)
    await sink.open()
    svc = Service(MemoryStore(), FixedKeyring(), audit=sink)
    assert await svc.verify_audit() == {"ghub": [], "other": []}
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["id"] for e in stored] == [e.id for e in events]
    assert {e["keyId"] for e in stored} == {FixedKeyring().primary_key_id}
    assert (path.stat().st_mode & 0o777) == 0o600


async def test_jsonl_keyed_file_without_heads_is_not_resealed(tmp_path: Path) -> None:
    """Keyed events with their heads file removed are reported, never re-sealed (laundered)."""
    path = tmp_path / "audit.jsonl"
    sink = JsonlAuditSink(path)
    await sink.open()
    svc = Service(MemoryStore(), FixedKeyring(), audit=sink)
    await svc.create_connection(
        {"slug": "ghub", "name": "G", "upstreamUrl": "https://mcp.example/mcp", "credential": "t"}
    )
    sink.heads_path.unlink()
    fresh = JsonlAuditSink(path)
    await fresh.open()
    report = await Service(MemoryStore(), FixedKeyring(), audit=fresh).verify_audit()
    assert "has no signed head" in "\n".join(report["ghub"])
    assert not fresh.heads_path.exists()


def _sealed_chain(n: int) -> list[AuditEvent]:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 1, tzinfo=UTC)
    return [AuditEvent(id=f"evt_{i:028x}", timestamp=at, connection="ghub") for i in range(n)]


@given(
    n=st.integers(2, 12),
    op=st.sampled_from(["edit", "delete", "swap", "truncate", "rehash"]),
    data=st.data(),
)
def test_any_single_tampering_is_detected(n: int, op: str, data: st.DataObject) -> None:
    """Whatever one edit, removal, swap, cut or unkeyed re-hash does to a chain, verify sees it."""
    from igris_mw._audit.chain import ChainHead, check_heads, derive_audit_key, verify_chain

    key = derive_audit_key("k1", b"property-test-material")
    chain: list[AuditEvent] = []
    previous = None
    for event in _sealed_chain(n):
        previous = seal_event(event, previous, key)
        chain.append(previous)
    head = ChainHead.sign("ghub", chain[-1].seq, chain[-1].hash, key)
    i = data.draw(st.integers(0, n - 1))
    tampered = list(chain)
    if op == "edit":
        tampered[i] = attrs.evolve(tampered[i], outcome="denied")
    elif op == "delete":
        del tampered[i]
    elif op == "swap":
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        tampered[i], tampered[j] = tampered[j], tampered[i]
    elif op == "truncate":
        tampered = tampered[:i]  # everything from position i on is cut (i = 0: all of it)
    else:
        rehashed: list[AuditEvent] = []
        prev = None
        for event in tampered:
            prev = seal_event(attrs.evolve(event, key_id=None), prev)
            rehashed.append(prev)
        tampered = rehashed
    keys = {"k1": key}
    problems = verify_chain(tampered, keys=keys)
    last: dict[str | None, AuditEvent | None] = {"ghub": tampered[-1]} if tampered else {}
    ends = check_heads(last, {"ghub": head}, None, keys)
    assert problems or ends.get("ghub"), (op, i)


class WritesDuringVerify(MemoryStore):
    """A store to which another writer appends just before verify reads the heads."""

    armed = False

    async def audit_heads(self) -> tuple[dict[str | None, Any], Any]:
        if self.armed:
            self.armed = False
            from datetime import UTC, datetime

            now = datetime.now(UTC)
            late = [
                AuditEvent(id=f"evt_late{i:024x}", timestamp=now, connection=c)
                for i, c in enumerate(["ghub", "new-one", None])
            ]
            await self.append_audit_events(late)
        return await super().audit_heads()


async def test_verify_during_writes_reports_nothing_false() -> None:
    """Events written between verify's walk and its read of the heads are walked too."""
    store = WritesDuringVerify()
    svc = Service(store, FixedKeyring())
    await svc.create_connection(
        {"slug": "ghub", "name": "G", "upstreamUrl": "https://mcp.example/mcp", "credential": "t"}
    )
    store.armed = True
    report = await svc.verify_audit()
    assert report == {"(global)": [], "ghub": [], "new-one": []}
