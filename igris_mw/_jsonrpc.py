"""MCP (JSON-RPC 2.0) parsing on the request path.

``peek_jsonrpc`` reads the JSON-RPC method and tool name from the first
``PEEK_LIMIT`` bytes of a request body, for the audit event (``rpcMethod``,
``tool``). It never raises: a body that is not JSON-RPC gives nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["PEEK_LIMIT", "peek_jsonrpc"]

PEEK_LIMIT = 64 * 1024

_METHOD_RE = re.compile(rb'"method"\s*:\s*"([^"\\]{1,200})"')
_TOOL_RE = re.compile(rb'"params"\s*:\s*\{[^{}]*?"name"\s*:\s*"([^"\\]{1,200})"')


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
    false (the body was longer than the peek), a bounded regex finds the
    first method instead.
    """
    if not body:
        return None, None
    if complete:
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
    found = _METHOD_RE.search(body)
    if not found:
        return None, None
    method = found.group(1).decode("utf-8", "replace")
    tool = None
    if method == "tools/call":
        tool_found = _TOOL_RE.search(body)
        tool = tool_found.group(1).decode("utf-8", "replace") if tool_found else None
    return method, tool
