"""Tests for igris_mw._jsonrpc: the JSON-RPC peek recorded in audit events."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from igris_mw._jsonrpc import peek_jsonrpc


def test_peek_single_request() -> None:
    """A tools/call request gives its method and tool name."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {}},
        }
    ).encode()
    assert peek_jsonrpc(body, complete=True) == ("tools/call", "echo")


def test_peek_batch_lists_distinct_methods_and_tools() -> None:
    """A JSON-RPC batch gives its distinct methods and tools, in order."""
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "b"}},
        ]
    ).encode()
    assert peek_jsonrpc(body, complete=True) == ("tools/call,tools/list", "a,b")


def test_peek_truncated_body_uses_bounded_scan() -> None:
    """A body longer than the peek still yields the method from its prefix."""
    prefix = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"x":"'
    )
    assert peek_jsonrpc(prefix + b"a" * 100, complete=False) == ("tools/call", "big")


def test_peek_non_json_is_none() -> None:
    """A body that is not JSON gives no method and never raises."""
    assert peek_jsonrpc(b"\xff\x00not json", complete=True) == (None, None)
    assert peek_jsonrpc(b"", complete=True) == (None, None)
    assert peek_jsonrpc(b"[" * 100_000, complete=True) == (None, None)


@given(st.binary(max_size=2048), st.booleans())
def test_peek_never_raises(body: bytes, complete: bool) -> None:
    """Any bytes at all: the peek returns, it never fails the request."""
    method, tool = peek_jsonrpc(body, complete=complete)
    assert method is None or isinstance(method, str)
    assert tool is None or isinstance(tool, str)
