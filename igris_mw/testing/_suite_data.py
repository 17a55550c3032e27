"""Records the storage suite writes, and the small helpers its tests share.

``make_connection``, ``make_api_key`` and ``make_event`` are public through
``igris_mw.testing.storage_suite``; a backend's own tests use them too.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ..models import ApiKey, AuditEvent, AuthType, Connection, Scope
from ..storage import Store

__all__ = [
    "T0",
    "StoreFactory",
    "all_connections",
    "at",
    "make_api_key",
    "make_connection",
    "make_event",
    "unsealed",
]

#: The suite's epoch: every timestamp it writes is T0 plus whole milliseconds.
T0 = datetime(2025, 1, 1, tzinfo=UTC)

StoreFactory = Callable[[], "Store | Awaitable[Store]"]


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def make_connection(slug: str, **changes: Any) -> Connection:
    """A valid connection with ``slug``; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "slug": slug,
        "name": f"Connection {slug}",
        "upstream_url": f"https://{slug}.example/mcp",
        "auth_type": AuthType.BEARER,
        "ciphertext": b"\x01envelope-of-" + slug.encode(),
        "created_at": at(0),
        "updated_at": at(0),
    }
    fields.update(changes)
    return Connection(**fields)


def make_api_key(key_id: str, **changes: Any) -> ApiKey:
    """A valid API key record with id ``key_id``; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "id": key_id,
        "name": f"key {key_id}",
        "key_hash": key_id.encode().ljust(32, b"\x00")[:32],
        "scopes": frozenset({Scope.MCP}),
        "created_at": at(0),
    }
    fields.update(changes)
    return ApiKey(**fields)


def make_event(connection: str | None, ms: int = 0, **changes: Any) -> AuditEvent:
    """An unsealed gateway audit event at ``T0 + ms`` milliseconds."""
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "timestamp": at(ms),
        "connection": connection,
        "api_key_id": "key1",
        "method": "POST",
        "path": "/",
        "rpc_method": "tools/call",
        "tool": "search",
        "status": 200,
        "latency_ms": 1.5,
        "bytes_in": 10,
        "bytes_out": 20,
        "credential_version": 1,
    }
    fields.update(changes)
    return AuditEvent(**fields)


def unsealed(event: AuditEvent) -> AuditEvent:
    return attrs.evolve(event, seq=0, prev_hash=None, hash=None)


async def all_connections(store: Store, limit: int) -> list[Connection]:
    out: list[Connection] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = await store.list_connections(limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        out.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return out
        assert page.items, "a page with a next cursor must not be empty"
    raise AssertionError("paging never ended")
