"""Making client text safe for every sink: escapes, replacements, caps with a marker."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from igris_mw._audit.events import (
    METADATA_LIMIT,
    PATH_LIMIT,
    TRUNCATED,
    USER_LIMIT,
    safe_event,
    safe_fields,
    safe_metadata,
    safe_text,
)
from igris_mw.models import AuditEvent, utcnow

_ANY = st.text(st.characters(codec=None, exclude_categories=()), max_size=5000)
_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | _ANY,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_ANY, inner, max_size=5),
    max_leaves=20,
)


def test_ordinary_text_is_kept_as_the_same_object() -> None:
    """Printable ASCII within the limit comes back unchanged (the fast path)."""
    text = "/v1/mcp/github-prod/tools?x=1"
    assert safe_text(text) is text
    assert safe_text("zoë — ok") == "zoë — ok"


def test_controls_are_escaped_and_surrogates_replaced() -> None:
    """NUL, ESC, DEL, C1, U+202E are escaped; a lone surrogate becomes U+FFFD."""
    assert safe_text("a\x00b") == "a\\x00b"
    assert safe_text("\x1b[2J\x7f\x85") == "\\x1b[2J\\x7f\\x85"
    assert safe_text("rtl\u202eevil") == "rtl\\u202eevil"
    assert safe_text("x\ud800y") == "x\ufffdy"


def test_lengths_are_capped_with_a_visible_marker() -> None:
    """path: 2048 UTF-8 bytes; user: 256 characters; both end in the marker."""
    fields: dict[str, Any] = {"path": "/" + "é" * 3000, "user": "u" * 1000, "method": "GET"}
    safe_fields(fields)
    assert fields["path"].endswith(TRUNCATED)
    assert len(fields["path"].encode()) <= PATH_LIMIT
    assert fields["user"] == "u" * (USER_LIMIT - len(TRUNCATED)) + TRUNCATED
    assert fields["method"] == "GET"


def test_large_metadata_becomes_a_truncation_marker() -> None:
    """Metadata over 4 KiB serialised is replaced by a marked prefix of its JSON."""
    out = safe_metadata({"k": "é" * 3000})
    assert out is not None
    assert list(out) == ["igris.truncated"]
    assert out["igris.truncated"].startswith('{"k":"éé')
    assert out["igris.truncated"].endswith(TRUNCATED)
    assert len(json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode()) <= 4096


def test_metadata_nan_depth_and_controls() -> None:
    """NaN becomes a string, deep nesting is cut, control characters escaped in keys and values."""
    deep: Any = "leaf"
    for _ in range(40):
        deep = [deep]
    out = safe_metadata({"n\x00": float("nan"), "d": deep, "e": "\x1b[31m"})
    assert out is not None
    assert out["n\\x00"] == "nan"
    assert out["e"] == "\\x1b[31m"
    assert "[nested too deep]" in json.dumps(out)


@given(_ANY, st.integers(min_value=20, max_value=4096), st.booleans())
def test_safe_text_is_always_storable(text: str, limit: int, in_bytes: bool) -> None:
    """Any text: the result is printable, has a UTF-8 form and fits its limit."""
    out = safe_text(text, limit, in_bytes=in_bytes)
    assert out.isprintable()
    encoded = out.encode("utf-8")
    assert "\x00" not in out
    assert (len(encoded) if in_bytes else len(out)) <= limit


@given(st.dictionaries(_ANY, _JSON, max_size=8))
def test_safe_metadata_is_always_storable(metadata: dict[str, Any]) -> None:
    """Any JSON object: the result is strict JSON with a UTF-8 form, at most 4 KiB."""
    out = safe_metadata(metadata)
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert len(text.encode("utf-8")) <= METADATA_LIMIT
    assert "\x00" not in text
    assert json.loads(text) == out


def test_safe_event_returns_the_same_event_when_nothing_changes() -> None:
    """An event already safe is returned as is; a hostile one is rebuilt safe."""
    plain = AuditEvent(id="evt_1", timestamp=utcnow(), connection="c", path="/p", user="u")
    assert safe_event(plain) is plain
    hostile = AuditEvent(
        id="evt_2", timestamp=utcnow(), connection="c", user="\x00", metadata={"k": "\ud800"}
    )
    fixed = safe_event(hostile)
    assert fixed.user == "\\x00"
    assert fixed.metadata == {"k": "\ufffd"}


async def test_core_sinks_tell_a_refused_value_from_an_outage(tmp_path: Any) -> None:
    """SQLite and the JSON-lines sink raise AuditRejected for a value they cannot store."""
    import pytest

    from igris_mw._audit import JsonlAuditSink
    from igris_mw._sqlite import SQLiteStore
    from igris_mw.errors import AuditRejected
    from igris_mw.testing.storage_suite import make_event

    sqlite = SQLiteStore(str(tmp_path / "igris.db"))
    await sqlite.open()
    jsonl = JsonlAuditSink(tmp_path / "audit.jsonl")
    await jsonl.open()
    try:
        with pytest.raises(AuditRejected):
            await sqlite.append_audit_events([make_event("bad\ud800", 0)])
        with pytest.raises(AuditRejected):
            await jsonl.append_audit_events([make_event("c", 0, user="\ud800")])
        await jsonl.append_audit_events([make_event("c", 1)])
        assert len(await jsonl.audit_chain("c")) == 1
    finally:
        await sqlite.close()
        await jsonl.close()
