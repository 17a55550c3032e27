"""Tests for igris_mw._jsonrpc: the JSON-RPC peek recorded in audit events."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from igris_mw._jsonrpc import peek_jsonrpc, prefix_method


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


def test_peek_of_unparsed_body_is_none() -> None:
    """A body longer than the peek gives no method and no tool: nothing is guessed."""
    prefix = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"x":"'
    )
    assert peek_jsonrpc(prefix + b"a" * 100, complete=False) == (None, None)


def test_peek_decoy_method_in_long_body_is_not_recorded() -> None:
    """A decoy "method" early in a long body is never recorded as the request's method."""
    decoy = b'{"jsonrpc":"2.0","id":1,"params":{"note":{"method":"tools/list"},"name":"x"},'
    body = decoy + b'"pad":"' + b"a" * 70_000 + b'","method":"tools/call"}'
    assert peek_jsonrpc(body[:65_536], complete=False) == (None, None)
    # Parsed whole, the real method is found and the decoy ignored.
    assert peek_jsonrpc(body, complete=True) == ("tools/call", "x")


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


def test_prefix_method_takes_the_top_level_member_only() -> None:
    """prefix_method reads the top-level "method" of a cut body, never a nested or quoted decoy."""
    decoy = b'{"jsonrpc":"2.0","params":{"method":"tools/list"},"note":"\\"method\\":\\"x\\"",'
    assert prefix_method(decoy + b'"method":"tools/call","pad":"aaaa') == "tools/call"
    assert prefix_method(decoy + b'"pad":"aaaa') is None
    assert prefix_method(b'[{"method":"tools/call"}]') is None
    assert prefix_method(b'{"method":1}') is None
    assert prefix_method(b'{"meth') is None


@given(st.binary(max_size=2048))
def test_prefix_method_never_raises(body: bytes) -> None:
    """Any bytes: prefix_method returns a string or None."""
    found = prefix_method(body)
    assert found is None or isinstance(found, str)
