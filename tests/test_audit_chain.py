"""The audit hash chain: seal_event links events, verify_chain finds edits, gaps and reorders."""

from __future__ import annotations

import attrs
import pytest

from igris_mw.models import AuditEvent
from igris_mw.storage import audit_chain_hash, seal_event, verify_chain
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
