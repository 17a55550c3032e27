"""MCP (JSON-RPC 2.0) parsing on the request path.

``peek_jsonrpc`` reads the JSON-RPC method and tool name from the first
``PEEK_LIMIT`` bytes of a request body, for the audit event (``rpcMethod``,
``tool``). It never raises: a body that is not JSON-RPC gives nothing.

Nothing is guessed: a body longer than the peek gives ``(None, None)``.
Scanning its prefix (as a regex once did) records whatever the client put
first, a decoy ``"method"`` inside a string or a nested object, or a member
that a later duplicate overrides in the upstream's parser; an audit record
must say what was sent or say that it does not know.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["PEEK_LIMIT", "peek_jsonrpc", "prefix_method"]

PEEK_LIMIT = 64 * 1024


def _from_message(msg: Any) -> tuple[str | None, str | None]:
    if not isinstance(msg, dict):
        return None, None
    method = msg.get("method")
    if not isinstance(method, str):
        return None, None
    tool = None
    if method == "tools/call":
        params = msg.get("params")
        if isinstance(params, dict) and isinstance(params.get("name"), str):
            tool = params["name"]
    return method[:200], tool[:200] if tool else None


def peek_jsonrpc(body: bytes, *, complete: bool) -> tuple[str | None, str | None]:
    """(rpcMethod, tool) from the first bytes of a request body.

    A batch gives its distinct methods and tools joined by ``,``. A body that
    is not JSON gives ``(None, None)``; it never raises. When ``complete`` is
    false (the body was longer than the peek, so it was not parsed) the
    answer is ``(None, None)`` too: never a guess from a prefix.
    """
    if not body or not complete:
        return None, None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if isinstance(doc, list):
        methods: list[str] = []
        tools: list[str] = []
        for item in doc[:100]:
            m, t = _from_message(item)
            if m and m not in methods:
                methods.append(m)
            if t and t not in tools:
                tools.append(t)
        return (",".join(methods) or None), (",".join(tools) or None)
    return _from_message(doc)


_WS = " \t\n\r"
_DECODER = json.JSONDecoder()


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def prefix_method(prefix: bytes) -> str | None:
    """The top-level ``"method"`` of a JSON object whose body was cut at ``prefix``.

    Not for the audit record (that says ``null`` for a body it did not
    parse): for checking an ``Mcp-Method`` header against a body too long to
    read whole. Members are walked at the top level only, each value parsed
    (``raw_decode``, C speed), so a ``"method"`` inside a string or a nested
    object is never taken; the first top-level one found wins. A later
    duplicate member beyond the prefix cannot be seen. ``None`` when the
    prefix is not an object or is cut before a top-level method.
    """
    text = prefix.decode("utf-8", "ignore")
    i = _skip_ws(text, 0)
    if not text.startswith("{", i):
        return None
    i += 1
    try:
        while True:
            i = _skip_ws(text, i)
            if text.startswith("}", i):
                return None
            key, i = _DECODER.raw_decode(text, i)
            i = _skip_ws(text, i)
            if not isinstance(key, str) or not text.startswith(":", i):
                return None
            value, i = _DECODER.raw_decode(text, _skip_ws(text, i + 1))
            if key == "method":
                return value[:200] if isinstance(value, str) else None
            i = _skip_ws(text, i)
            if not text.startswith(",", i):
                return None
            i += 1
    except (ValueError, RecursionError):
        return None
