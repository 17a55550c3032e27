"""Audit event ids, and the event <-> JSON-line codec the writer's spill file uses.

Events are built where the request or the change happens (``_gateway``,
``_service``); what they share lives here: the id every event gets
(``new_event_id``, time-ordered so a listing by id is a listing by time) and
the one-line JSON form of an event.
"""

from __future__ import annotations

import json
import random
import time

from ..models import AuditEvent

__all__ = ["event_from_line", "event_to_line", "new_event_id"]


def new_event_id() -> str:
    """Time-ordered, unique: ``evt_`` + 12 hex digits of ms + 16 random hex."""
    # An id is not a secret: the module PRNG (seeded from os.urandom, and
    # reseeded in a forked child) saves a getrandom() syscall per request.
    return f"evt_{int(time.time() * 1000):012x}{random.getrandbits(64):016x}"


def event_to_line(event: AuditEvent) -> str:
    """``event.to_json()`` as one compact JSON line (no newline)."""
    return json.dumps(event.to_json(), separators=(",", ":"))


def event_from_line(line: str) -> AuditEvent:
    """The inverse of ``event_to_line``.

    Raises:
        ValueError: not JSON, or not an event (``KeyError`` for a missing field).
    """
    return AuditEvent.from_json(json.loads(line))
