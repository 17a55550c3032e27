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


_last_ms = 0
_last_low = 0


def new_event_id() -> str:
    """Time-ordered, unique: ``evt_`` + 12 hex digits of ms + 16 hex.

    Within one millisecond the low part counts up from a random start (as a
    monotonic ULID does), so in one process a later event always has a
    larger id: listings ordered by id are in creation order.
    """
    global _last_ms, _last_low
    ms = int(time.time() * 1000)
    if ms <= _last_ms and _last_low < 2**64 - 1:
        ms, low = _last_ms, _last_low + 1
    else:
        # An id is not a secret: the module PRNG (seeded from os.urandom, and
        # reseeded in a forked child) saves a getrandom() syscall per request.
        # The top bit is left clear so a millisecond has room to count up.
        low = random.getrandbits(63)
    _last_ms, _last_low = ms, low
    return f"evt_{ms:012x}{low:016x}"


def event_to_line(event: AuditEvent) -> str:
    """``event.to_json()`` as one compact JSON line (no newline)."""
    return json.dumps(event.to_json(), separators=(",", ":"))


def event_from_line(line: str) -> AuditEvent:
    """The inverse of ``event_to_line``.

    Raises:
        ValueError: not JSON, or not an event (``KeyError`` for a missing field).
    """
    return AuditEvent.from_json(json.loads(line))
