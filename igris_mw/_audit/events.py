"""Audit event ids, and the event <-> JSON-line codec the writer's spill file uses.

Events are built where the request or the change happens (``_gateway``,
``_service``); what they share lives here: the id every event gets
(``new_event_id``, time-ordered so a listing by id is a listing by time) and
the one-line JSON form of an event.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping
from typing import Any

import attrs

from ..models import AuditEvent

__all__ = [
    "METADATA_LIMIT",
    "PATH_LIMIT",
    "TRUNCATED",
    "USER_LIMIT",
    "event_from_line",
    "event_to_line",
    "new_event_id",
    "safe_event",
    "safe_fields",
    "safe_metadata",
    "safe_text",
]


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


# -- making client-controlled text safe for every sink --------------------------
#
# Whatever a client sends ends up in an event: the path, X-Igris-User,
# X-Igris-Metadata, the JSON-RPC method and tool. Each sink has its own
# refusals (Postgres: NUL in text; UTF-8 files: lone surrogates), and an
# operator's terminal has its own dangers (escape sequences). So every string
# is made safe once, when the event is built, and the hash covers the safe form.

PATH_LIMIT = 2048
"""Most bytes (UTF-8) of ``path`` kept in an event."""
USER_LIMIT = 256
"""Most characters of ``user`` kept in an event."""
METADATA_LIMIT = 4096
"""Most bytes of ``metadata`` serialised (compact JSON, UTF-8) kept in an event."""
TEXT_LIMIT = 2048
"""Most bytes of any other string field."""
TRUNCATED = "...[truncated]"
"""Appended to a string that was cut (the result stays within its limit)."""
METADATA_TRUNCATED_KEY = "igris.truncated"
"""The one key of a ``metadata`` that was too large: its value is a prefix of
the serialised original ending in ``TRUNCATED``."""
_MAX_DEPTH = 16

# Per field: (limit, counted in UTF-8 bytes rather than characters).
_FIELD_LIMITS: dict[str, tuple[int, bool]] = {
    "connection": (256, False),
    "user": (USER_LIMIT, False),
    "path": (PATH_LIMIT, True),
}


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xD800 <= code <= 0xDFFF:
        return "\ufffd"  # a lone surrogate: no encoder can write it
    if ch.isprintable():
        return ch
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class _EscapeTable(dict[int, str]):
    """``str.translate`` table escaping what ``_escape_char`` escapes, filled
    on first use. Only code points below U+3000 are kept, so a client
    sending every code point cannot grow it past a few hundred kilobytes."""

    def __missing__(self, code: int) -> str:
        escaped = _escape_char(chr(code))
        if code < 0x3000:
            self[code] = escaped
        return escaped


_ESCAPES = _EscapeTable()


def safe_text(value: str, limit: int = TEXT_LIMIT, *, in_bytes: bool = True) -> str:
    """``value`` with control and other non-printable characters escaped
    (``\\x00``, ``\\u202e``), lone surrogates replaced by U+FFFD, and cut to
    ``limit`` (UTF-8 bytes, or characters when ``in_bytes`` is false) with
    ``TRUNCATED`` at the end.

    Ordinary text (printable ASCII within the limit) is returned as is,
    after two C-speed checks: this runs for every string of every event.
    """
    if value.isascii():
        if value.isprintable() and len(value) <= limit:
            return value
    elif value.isprintable() and len(value) * 4 <= limit:
        # Printable non-ASCII may still hold lone surrogates (isprintable is
        # false for them, so not here) and is short enough in any encoding.
        return value
    text = value if value.isprintable() else value.translate(_ESCAPES)
    return _cut(text, limit, in_bytes)


def _cut(text: str, limit: int, in_bytes: bool) -> str:
    if in_bytes:
        data = text.encode("utf-8")
        if len(data) <= limit:
            return text
        keep = data[: max(0, limit - len(TRUNCATED))].decode("utf-8", "ignore")
        return keep + TRUNCATED
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def _safe_json(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return safe_text(value, METADATA_LIMIT)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        # NaN and the infinities are not JSON; Python's json module writes
        # them anyway and strict readers refuse the result.
        return value if math.isfinite(value) else repr(value)
    if depth >= _MAX_DEPTH:
        return "[nested too deep]"
    if isinstance(value, Mapping):
        return {
            safe_text(str(k), METADATA_LIMIT): _safe_json(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_safe_json(v, depth + 1) for v in value]
    return safe_text(repr(value), METADATA_LIMIT)


def safe_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``metadata`` with every key and string made safe (see ``safe_text``),
    nesting below 16 levels, non-finite numbers as strings, and at most
    ``METADATA_LIMIT`` bytes serialised: a larger one becomes
    ``{"igris.truncated": "<prefix of its JSON>...[truncated]"}``."""
    if metadata is None:
        return None
    clean = _safe_json(metadata, 0)
    text = json.dumps(clean, separators=(",", ":"), ensure_ascii=False)
    if len(text) <= METADATA_LIMIT // 4 or len(text.encode("utf-8")) <= METADATA_LIMIT:
        return clean  # type: ignore[no-any-return]
    # The marker object itself must fit: {"igris.truncated":"..."} plus escapes.
    room = METADATA_LIMIT - len(METADATA_TRUNCATED_KEY) - 16
    prefix = text[: room // 2]  # JSON-in-a-string escapes each '"' as 2 characters
    while True:
        marked = {METADATA_TRUNCATED_KEY: _cut(prefix + TRUNCATED, room, True)}
        if len(json.dumps(marked, separators=(",", ":"), ensure_ascii=False).encode()) <= (
            METADATA_LIMIT
        ):
            return marked
        prefix = prefix[: len(prefix) * 3 // 4]


def safe_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Make every string of an event's keyword arguments safe, in place
    (``metadata`` with ``safe_metadata``); returns ``fields``."""
    # The common case (every string printable ASCII, together under 256
    # characters, the smallest limit) in a few C-level calls, no Python loop.
    joined = "".join([v for v in fields.values() if type(v) is str])
    if not (len(joined) <= 256 and joined.isascii() and joined.isprintable()):
        for name, value in fields.items():
            if type(value) is str:
                limit, in_bytes = _FIELD_LIMITS.get(name, (TEXT_LIMIT, True))
                fields[name] = safe_text(value, limit, in_bytes=in_bytes)
    metadata = fields.get("metadata")
    if metadata is not None and not _plain_and_small(metadata):
        fields["metadata"] = safe_metadata(metadata)
    return fields


def _plain_and_small(metadata: Any) -> bool:
    """True for the usual metadata, which ``safe_metadata`` would leave as it is:
    a flat mapping of printable ASCII keys to printable ASCII strings, ints,
    booleans or None, certainly under ``METADATA_LIMIT`` serialised."""
    if type(metadata) is not dict or len(metadata) > 64:
        return False
    try:
        # All strings (the usual case): checked in C, no Python loop.
        text = "".join(metadata) + "".join(metadata.values())
    except TypeError:
        pass
    else:
        # Each character at most doubles when serialised ('"' and '\\' escaped).
        return (
            text.isascii()
            and text.isprintable()
            and 2 * len(text) + 6 * len(metadata) + 2 <= METADATA_LIMIT
        )
    size = 2
    for key, value in metadata.items():
        if type(key) is not str or not (key.isascii() and key.isprintable()):
            return False
        if type(value) is str:
            if not (value.isascii() and value.isprintable()):
                return False
            size += 2 * len(value) + 2
        elif value is None or type(value) is bool:
            size += 5
        elif type(value) is int and -(10**18) < value < 10**18:
            size += 20
        else:
            return False
        size += 2 * len(key) + 4
    return size <= METADATA_LIMIT


def safe_event(event: AuditEvent) -> AuditEvent:
    """``event`` with every string made safe; the same object when it already was."""
    fields: dict[str, Any] = {
        "connection": event.connection,
        "action": event.action,
        "api_key_id": event.api_key_id,
        "user": event.user,
        "method": event.method,
        "path": event.path,
        "rpc_method": event.rpc_method,
        "tool": event.tool,
        "outcome": event.outcome,
    }
    before = dict(fields)
    safe_fields(fields)
    changed: dict[str, Any] = {k: v for k, v in fields.items() if v is not before[k]}
    if event.metadata is not None:
        metadata = safe_metadata(event.metadata)
        if metadata != event.metadata:
            changed["metadata"] = metadata
    return attrs.evolve(event, **changed) if changed else event
