"""The audit hash chain (igris_mw._audit.chain): seal_event links events,
verify_chain finds edits, gaps and reorders, and every sink hashes alike."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import hypothesis
import pytest
from hypothesis import strategies as st

from igris_mw import storage
from igris_mw._audit import chain
from igris_mw._audit.chain import canonical_json, derive_audit_key
from igris_mw._audit.jsonl import JsonlAuditSink
from igris_mw._sqlite import SQLiteStore
from igris_mw.models import AuditEvent
from igris_mw.storage import AuditSink, audit_chain_hash, seal_event, seal_event_json, verify_chain
from igris_mw.testing import MemoryStore
from igris_mw.testing.storage_suite import make_event


def _chain(n: int, connection: str = "chain") -> list[AuditEvent]:
    events: list[AuditEvent] = []
    for i in range(n):
        events.append(
            seal_event(make_event(connection, i, id=f"e{i}"), events[-1] if events else None)
        )
    return events


def test_seal_links_each_event_to_the_one_before() -> None:
    """seal_event numbers events from 1 and carries the previous event's hash."""
    chain = _chain(3)
    assert [e.seq for e in chain] == [1, 2, 3]
    assert chain[0].prev_hash is None
    assert chain[1].prev_hash == chain[0].hash
    assert chain[2].prev_hash == chain[1].hash
    assert all(e.hash == audit_chain_hash(e) for e in chain)


def test_seal_ignores_a_previous_seal() -> None:
    """Sealing an already sealed event re-seals it from the given previous event."""
    chain = _chain(2)
    resealed = seal_event(chain[1], None)
    assert resealed.seq == 1
    assert resealed.prev_hash is None
    assert verify_chain([resealed]) == []


def test_intact_chain_verifies() -> None:
    """An untouched chain, whole or from a midpoint, has no problems."""
    chain = _chain(5)
    assert verify_chain(chain) == []
    assert verify_chain(chain[2:], previous=chain[1]) == []
    assert verify_chain([]) == []


@pytest.mark.parametrize(
    "edit",
    [
        {"status": 500},
        {"user": "mallory"},
        {"metadata": {"role": "admin"}},
        {"outcome": "denied"},
        {"connection": "elsewhere"},
        {"latency_ms": 99.0},
    ],
)
def test_edited_event_detected(edit: dict[str, object]) -> None:
    """Changing any field of a stored event makes verify_chain report that event as edited."""
    chain = _chain(4)
    chain[2] = attrs.evolve(chain[2], **edit)
    problems = verify_chain(chain)
    assert any("e2" in p and "edited" in p for p in problems)


def test_edited_and_rehashed_event_breaks_the_next_link() -> None:
    """An edit whose hash is recomputed still breaks the link from the following event."""
    chain = _chain(4)
    forged = attrs.evolve(chain[1], status=500)
    chain[1] = attrs.evolve(forged, hash=audit_chain_hash(forged))
    problems = verify_chain(chain)
    assert problems
    assert any("e2" in p and "does not follow" in p for p in problems)


@pytest.mark.parametrize("index", [0, 2, 4])
def test_removed_event_detected(index: int) -> None:
    """Removing the first, a middle or the last-but-one event is reported as missing."""
    chain = _chain(6)
    del chain[index]
    problems = verify_chain(chain)
    assert any(f"seq {index + 1} is missing" in p for p in problems)


def test_removed_tail_is_invisible_without_a_later_event() -> None:
    """Dropping the newest event leaves a valid shorter chain: only a later event can tell."""
    chain = _chain(3)
    assert verify_chain(chain[:-1]) == []


def test_reordered_events_detected() -> None:
    """Swapping two events is reported."""
    chain = _chain(4)
    chain[1], chain[2] = chain[2], chain[1]
    assert verify_chain(chain) != []


def test_event_from_another_chain_detected() -> None:
    """An event spliced in from another connection's chain does not follow its predecessor."""
    chain = _chain(3)
    other = _chain(3, connection="other")
    chain[1] = other[1]
    assert any("does not follow" in p for p in verify_chain(chain))


def test_hash_covers_millisecond_time_only() -> None:
    """The hash covers the millisecond RFC 3339 timestamp; sub-millisecond digits do not count."""
    event = make_event("ms", 5)
    later = attrs.evolve(event, timestamp=event.timestamp.replace(microsecond=5999))
    assert audit_chain_hash(event) == audit_chain_hash(later)
    assert audit_chain_hash(event) != audit_chain_hash(
        attrs.evolve(event, timestamp=event.timestamp.replace(microsecond=6000))
    )


def _golden_events() -> list[AuditEvent]:
    # Non-ASCII text, nested metadata and both kinds: what canonical_json must keep stable.
    first = AuditEvent(
        id="evt_golden_1",
        timestamp=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        connection="golden",
        api_key_id="key_1",
        user="ada\u00e9\u2603",
        metadata={"b": [1, 2.5, None], "a": "\u00fc\U0001f600"},
        method="POST",
        path="/mcp",
        rpc_method="tools/call",
        tool="search",
        status=200,
        latency_ms=1.25,
        bytes_in=10,
        bytes_out=20,
        credential_version=3,
    )
    second = AuditEvent(
        id="evt_golden_2",
        timestamp=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
        connection="golden",
        kind="management",
        action="rotate",
        credential_version=4,
    )
    return [first, second]


# Computed by the code before the chain moved to igris_mw._audit.chain: chains
# stored by any earlier version must keep verifying.
GOLDEN_HASHES = [
    "677de9a660ad678e78baac50bcc31c707a25bc2bc0a746138dfa3e37e8420ce1",
    "5a6ff18387e0f70074712b34457ca44574702b52fa38d9b3baec698caa97f633",
]


def test_golden_hashes_do_not_change() -> None:
    """Sealing fixed events gives the hashes earlier versions stored, so old chains verify."""
    first, second = _golden_events()
    sealed_first = seal_event(first, None)
    sealed_second = seal_event(second, sealed_first)
    assert [sealed_first.hash, sealed_second.hash] == GOLDEN_HASHES
    assert verify_chain([sealed_first, sealed_second]) == []


def test_seal_event_json_text_is_the_canonical_json_plus_the_hash() -> None:
    """The stored JSON text parses back to the sealed event; its hash is that of canonical_json."""
    sealed, text = seal_event_json(_golden_events()[0], None)
    body = json.loads(text)
    assert AuditEvent.from_json(body) == sealed
    del body["hash"]
    assert hashlib.sha256(canonical_json(body).encode()).hexdigest() == sealed.hash
    assert audit_chain_hash(sealed) == sealed.hash


def test_storage_reexports_the_chain_functions() -> None:
    """Store authors keep importing the chain from igris_mw.storage: the same functions."""
    assert storage.seal_event is chain.seal_event
    assert storage.seal_event_json is chain.seal_event_json
    assert storage.audit_chain_hash is chain.audit_chain_hash
    assert storage.verify_chain is chain.verify_chain


async def _stored(sink: AuditSink, events: list[AuditEvent]) -> list[AuditEvent]:
    await sink.append_audit_events(events)
    return await sink.audit_chain("golden")


async def test_every_sink_hashes_the_same_events_identically(tmp_path: Path) -> None:
    """The memory store, the SQLite store and the JSON-lines sink store the golden hashes."""
    memory = MemoryStore()
    sqlite = SQLiteStore(tmp_path / "igris.db")
    jsonl = JsonlAuditSink(tmp_path / "audit.jsonl")
    await memory.open()
    await sqlite.open()
    await jsonl.open()
    try:
        chains = [await _stored(s, _golden_events()) for s in (memory, sqlite, jsonl)]
    finally:
        await sqlite.close()
        await jsonl.close()
    for stored in chains:
        assert [e.hash for e in stored] == GOLDEN_HASHES
        assert verify_chain(stored) == []
    # What the JSON-lines sink reads back from its file verifies too.
    reread = JsonlAuditSink(tmp_path / "audit.jsonl")
    await reread.open()
    assert [e.hash for e in await reread.audit_chain("golden")] == GOLDEN_HASHES


def test_keyed_seal_event_json_text_names_the_key_and_parses_back() -> None:
    """Sealed under a key, the stored text carries that keyId, parses back to the sealed
    event and its hash is the key's MAC of the canonical text; sealed without a key, a
    keyId the event carried is gone from both."""
    key = derive_audit_key("k-test", b"\x01" * 32)
    first = attrs.evolve(_golden_events()[0], key_id="stale")
    sealed, text = seal_event_json(first, None, key)
    body = json.loads(text)
    assert body["keyId"] == "k-test" == sealed.key_id
    assert AuditEvent.from_json(body) == sealed
    del body["hash"]
    assert key.mac(canonical_json(body).encode()) == sealed.hash
    plain, plain_text = seal_event_json(first, None)
    assert plain.key_id is None
    assert "keyId" not in json.loads(plain_text)
    assert audit_chain_hash(plain) == plain.hash


def _text_via_to_json(
    event: AuditEvent, seq: int, prev_hash: str | None, key: chain.AuditKey | None
) -> tuple[str, str]:
    """The sealed text as it was built before seal_event_text: to_json, then canonical_json."""
    body = event.to_json()
    body.pop("keyId", None)
    if key is not None:
        body["keyId"] = key.key_id
    body["seq"] = seq
    body["prevHash"] = prev_hash
    del body["hash"]
    canonical = canonical_json(body)
    digest = (
        hashlib.sha256(canonical.encode()).hexdigest()
        if key is None
        else key.mac(canonical.encode())
    )
    return digest, canonical[:-1] + f',"hash":"{digest}"}}'


_text = st.one_of(
    st.none(), st.text(), st.sampled_from(["tools/call", "a\x00\u00e9\U0001f600\ud800"])
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_number = st.one_of(st.none(), st.integers(), st.booleans(), st.floats())


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    fields=st.fixed_dictionaries(
        {
            "id": st.text(),
            "timestamp": st.datetimes(
                min_value=datetime(1, 1, 2),
                max_value=datetime(9999, 12, 30),
                timezones=st.just(UTC),
            ),
            "connection": _text,
            "kind": st.text(),
            "action": _text,
            "api_key_id": _text,
            "user": _text,
            "metadata": st.none() | st.dictionaries(st.text(), _json, max_size=4),
            "method": _text,
            "path": _text,
            "rpc_method": _text,
            "tool": _text,
            "status": _number,
            "outcome": st.text(),
            "latency_ms": _number,
            "bytes_in": _number,
            "bytes_out": _number,
            "credential_version": _number,
            "seq": st.integers(0, 10),
            "prev_hash": _text,
            "hash": _text,
            "count": _number,
            "changes": st.none() | st.dictionaries(st.text(), _json, max_size=3),
            "key_id": _text,
        }
    ),
    seq=st.integers(1, 2**62),
    prev_hash=st.none() | st.text(min_size=64, max_size=64, alphabet="0123456789abcdef"),
    keyed=st.booleans(),
)
def test_seal_event_text_is_the_canonical_json_of_to_json(
    fields: dict[str, Any], seq: int, prev_hash: str | None, keyed: bool
) -> None:
    """Written field by field, the sealed text is byte for byte what to_json + canonical_json
    give, for any field values (escapes, surrogates, NaN, bools, nested metadata)."""
    event = AuditEvent(**fields)
    key = derive_audit_key("k-test", b"\x01" * 32) if keyed else None
    assert chain.seal_event_text(event, seq, prev_hash, key) == _text_via_to_json(
        event, seq, prev_hash, key
    )
