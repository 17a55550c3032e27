"""The audit hash chain: canonical JSON, the event hash, sealing and verifying.

Every sink (the SQLite, memory and Postgres stores, the JSON-lines sink)
seals events with ``seal_event`` / ``seal_event_json`` and ``audit verify``
checks them with ``verify_chain``; all of them hash the one text that
``canonical_json`` makes, so a sink and ``verify`` can never disagree about
what was hashed. Changing ``canonical_json`` changes every hash already
stored: existing chains would stop verifying (``tests/test_audit_chain.py``
pins golden hashes).

This module is a leaf (it imports ``models`` only): ``igris_mw.storage``
re-exports its public names for store authors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..models import AuditEvent

__all__ = [
    "audit_chain_hash",
    "canonical_json",
    "seal_event",
    "seal_event_json",
    "verify_chain",
]


def canonical_json(body: Mapping[str, Any]) -> str:
    """The text an event's hash covers: keys sorted, compact, ASCII only.

    ``body`` is ``AuditEvent.to_json()`` without ``hash``.
    """
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def audit_chain_hash(event: AuditEvent) -> str:
    """SHA-256 (hex) of the event's canonical JSON, ``prevHash`` and ``seq`` included."""
    body = event.to_json()
    body.pop("hash", None)
    return _sha256_hex(canonical_json(body))


def seal_event(event: AuditEvent, previous: AuditEvent | None) -> AuditEvent:
    """Chain ``event`` after ``previous`` (``None``: first of its connection)."""
    return seal_event_json(event, previous)[0]


def seal_event_json(event: AuditEvent, previous: AuditEvent | None) -> tuple[AuditEvent, str]:
    """``seal_event``, plus the sealed event's JSON text (``to_json()``, keys
    sorted, compact) for stores that keep events as JSON: it is built once,
    for the hash, instead of once more to store it."""
    seq = 1 if previous is None else previous.seq + 1
    prev_hash = None if previous is None else previous.hash
    # One to_json, one dumps and one evolve per event: this runs once per audited request.
    body = event.to_json()
    body["seq"] = seq
    body["prevHash"] = prev_hash
    del body["hash"]
    canonical = canonical_json(body)
    digest = _sha256_hex(canonical)
    # The hashed text with the hash appended: it parses back to the sealed event.
    text = canonical[:-1] + f',"hash":"{digest}"}}'
    return attrs.evolve(event, seq=seq, prev_hash=prev_hash, hash=digest), text


def verify_chain(events: Sequence[AuditEvent], previous: AuditEvent | None = None) -> list[str]:
    """Problems found in a run of one connection's events, oldest first.

    An empty list means every event is intact and none is missing.
    """
    problems: list[str] = []
    expected_seq = 1 if previous is None else previous.seq + 1
    prev_hash = None if previous is None else previous.hash
    for event in events:
        if event.seq != expected_seq:
            problems.append(
                f"event seq {expected_seq} is missing (next found: seq {event.seq}, id {event.id})"
            )
        if event.prev_hash != prev_hash:
            problems.append(
                f"event {event.id} (seq {event.seq}) does not follow the event before it"
            )
        if event.hash != audit_chain_hash(event):
            problems.append(
                f"event {event.id} (seq {event.seq}) was edited: its hash does not match"
            )
        expected_seq = event.seq + 1
        prev_hash = event.hash
    return problems
