"""Tests for igris_mw._sse: the legacy endpoint-event rewrite."""

from __future__ import annotations

import itertools

import pytest
import yarl
from hypothesis import given, settings
from hypothesis import strategies as st

from igris_mw._proxy.sse import WITHHELD, EndpointRewriter, endpoint_rewrite

_REWRITE = endpoint_rewrite("/legacy", "/root/v1/mcp/s", yarl.URL("http://up:9"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"/legacy/messages/?session_id=x", b"/root/v1/mcp/s/messages/?session_id=x"),
        (b"http://up:9/legacy/messages/?session_id=x", b"/root/v1/mcp/s/messages/?session_id=x"),
        (b"messages/?session_id=x", b"messages/?session_id=x"),
        (b"/elsewhere/messages", b"/elsewhere/messages"),
        (b"/legacyish/messages", b"/legacyish/messages"),
    ],
)
def test_endpoint_rewrite_mapping(data: bytes, expected: bytes) -> None:
    """The upstream base path is replaced by the gateway prefix; other places stay as they are."""
    assert _REWRITE(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"http://evil:9/legacy/messages/?session_id=x",
        b"https://up:9/legacy/messages/?session_id=x",
        b"http://up:10/legacy/messages/?session_id=x",
        b"//evil/legacy/messages/?session_id=x",
        b"//evil/elsewhere",
        b"http://evil/elsewhere/messages",
        b"http://up:9/elsewhere/messages",
        b"http://user@evil/x",
    ],
)
def test_endpoint_rewrite_withholds_other_origins(data: bytes) -> None:
    """An absolute endpoint URL not under the upstream's origin and base path is withheld."""
    assert _REWRITE(data) is None


def test_endpoint_rewrite_without_origin_trusts_no_absolute_url() -> None:
    """With no upstream origin given, every absolute endpoint URL is withheld."""
    rewrite = endpoint_rewrite("/legacy", "/v1/mcp/s")
    assert rewrite(b"http://up:9/legacy/messages/") is None
    assert rewrite(b"/legacy/messages/") == b"/v1/mcp/s/messages/"


def test_rewriter_replaces_withheld_endpoint_by_a_comment() -> None:
    """A cross-origin endpoint event reaches the client as a comment and carries no data."""
    r = EndpointRewriter(_REWRITE)
    out = r.feed(b"event: endpoint\ndata: http://evil:1/legacy/messages/?s=1\n\n")
    assert out == b"event: endpoint\n" + WITHHELD + b"\n\n"
    assert b"evil" not in out
    assert WITHHELD.startswith(b":")


def test_rewriter_does_not_hold_other_events() -> None:
    """Outside an endpoint event, an unfinished data line passes at once."""
    r = EndpointRewriter(_REWRITE)
    assert r.feed(b'event: message\ndata: {"partial') == b'event: message\ndata: {"partial'
    assert r.feed(b'": 1}\n\n') == b'": 1}\n\n'
    held = r.feed(b"event: endpoint\ndata: /legacy/mess")
    assert held == b"event: endpoint\n"
    assert r.feed(b"ages/\n\n") == b"data: /root/v1/mcp/s/messages/\n\n"


_events = st.lists(
    st.one_of(
        st.tuples(st.just("endpoint"), st.sampled_from(["/legacy/messages/?session_id=1", "/x"])),
        st.tuples(st.just("message"), st.text("abc{}:/ ", max_size=20)),
    ),
    min_size=1,
    max_size=5,
)


@settings(max_examples=150, deadline=None)
@given(
    events=_events, eol=st.sampled_from(["\n", "\r\n", "\r"]), cuts=st.lists(st.integers(0, 400))
)
def test_rewriter_is_independent_of_chunking(
    events: list[tuple[str, str]], eol: str, cuts: list[int]
) -> None:
    """However the stream is split into chunks, the output is the same rewritten stream."""
    source = "".join(f"event: {kind}{eol}data: {data}{eol}{eol}" for kind, data in events)
    expected = "".join(
        f"event: {kind}{eol}data: "
        f"{_REWRITE(data.encode()).decode() if kind == 'endpoint' else data}{eol}{eol}"
        for kind, data in events
    )
    raw = source.encode()
    bounds = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    r = EndpointRewriter(_REWRITE)
    out = b"".join(r.feed(raw[a:b]) for a, b in itertools.pairwise(bounds)) + r.flush()
    assert out.decode() == expected
