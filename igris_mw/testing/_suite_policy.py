"""Conformance tests for the access policy fields (``StoreSuite`` inherits them).

Every store keeps a connection's ``rate_limit`` and ``tools`` and a key's
``rate_limit``, ``tools`` and ``max_concurrent``, and implements
``update_api_key``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from .._errors import NotFound
from ..models import ApiKey, AuthType, Connection, RateLimit, Scope, ToolPolicy
from ..storage import Change, Store

_T0 = datetime(2025, 1, 1, tzinfo=UTC)
_RATE = RateLimit(30, 5)
_TOOLS = ToolPolicy(allow=("search*", "read_*"), deny=("search_admin",))


def _connection(slug: str, **changes: Any) -> Connection:
    fields: dict[str, Any] = {
        "slug": slug,
        "name": f"Connection {slug}",
        "upstream_url": f"https://{slug}.example/mcp",
        "auth_type": AuthType.BEARER,
        "ciphertext": b"\x01envelope-of-" + slug.encode(),
        "created_at": _T0,
        "updated_at": _T0,
    }
    fields.update(changes)
    return Connection(**fields)


def _key(key_id: str, **changes: Any) -> ApiKey:
    fields: dict[str, Any] = {
        "id": key_id,
        "name": f"key {key_id}",
        "key_hash": key_id.encode().ljust(32, b"\x00")[:32],
        "scopes": frozenset({Scope.MCP}),
        "created_at": _T0,
    }
    fields.update(changes)
    return ApiKey(**fields)


class PolicySuite:
    """The access policy part of ``StoreSuite`` (needs its ``store`` fixture)."""

    async def test_connection_policy_round_trips(self, store: Store) -> None:
        """A connection's rateLimit and tools read back as written, on create and update."""
        created = await store.create_connection(
            _connection("policy-conn", rate_limit=_RATE, tools=_TOOLS)
        )
        assert created.rate_limit == _RATE
        assert created.tools == _TOOLS
        read = await store.get_connection("policy-conn")
        assert (read.rate_limit, read.tools) == (_RATE, _TOOLS)
        cleared = await store.update_connection(
            attrs.evolve(read, rate_limit=None, tools=ToolPolicy(deny=("*",))),
            expected_version=read.version,
        )
        again = await store.get_connection("policy-conn")
        assert again.rate_limit is None
        assert again.tools == ToolPolicy(deny=("*",))
        assert cleared.tools == again.tools

    async def test_connection_without_policy_reads_none(self, store: Store) -> None:
        """A connection written without a policy has none."""
        await store.create_connection(_connection("no-policy"))
        read = await store.get_connection("no-policy")
        assert read.rate_limit is None
        assert read.tools is None

    async def test_api_key_policy_round_trips(self, store: Store) -> None:
        """A key's rateLimit, tools and maxConcurrent read back by hash and in the list."""
        key = _key("policy-key", rate_limit=_RATE, tools=_TOOLS, max_concurrent=3)
        await store.create_api_key(key)
        found = await store.get_api_key_by_hash(key.key_hash)
        assert found is not None
        assert (found.rate_limit, found.tools, found.max_concurrent) == (_RATE, _TOOLS, 3)
        listed = [k for k in await store.list_api_keys() if k.id == key.id]
        assert listed[0].max_concurrent == 3

    async def test_update_api_key_replaces_mutable_fields_only(self, store: Store) -> None:
        """update_api_key changes name, connections, expiry and policy; keeps hash and scopes."""
        key = _key("upd-key", connections=frozenset({"a-one", "b-two"}))
        await store.create_api_key(key)
        seen: list[Change] = []
        store.add_listener(seen.append)
        expires = _T0 + timedelta(days=30)
        changed = attrs.evolve(
            key,
            name="renamed",
            connections=frozenset({"b-two"}),
            expires_at=expires,
            rate_limit=_RATE,
            tools=_TOOLS,
            max_concurrent=2,
            # not mutable through update_api_key: the store keeps its own
            scopes=frozenset({Scope.ADMIN}),
        )
        stored = await store.update_api_key(changed)
        found = await store.get_api_key_by_hash(key.key_hash)
        assert found is not None
        for record in (stored, found):
            assert record.name == "renamed"
            assert record.connections == frozenset({"b-two"})
            assert record.expires_at == expires
            assert (record.rate_limit, record.tools, record.max_concurrent) == (_RATE, _TOOLS, 2)
            assert record.scopes == frozenset({Scope.MCP})
            assert record.key_hash == key.key_hash
        assert Change("api_key", key.id) in seen
        cleared = await store.update_api_key(
            attrs.evolve(found, rate_limit=None, tools=None, max_concurrent=None, connections=None)
        )
        assert (cleared.rate_limit, cleared.tools, cleared.max_concurrent) == (None, None, None)
        assert cleared.connections is None

    async def test_update_unknown_api_key_raises_not_found(self, store: Store) -> None:
        """update_api_key of an unknown id raises NotFound and writes nothing."""
        with pytest.raises(NotFound):
            await store.update_api_key(_key("nobody"))
        assert await store.get_api_key_by_hash(_key("nobody").key_hash) is None

    async def test_empty_grant_list_round_trips(self, store: Store) -> None:
        """A key whose last granted connection was taken away keeps an empty grant (none)."""
        key = _key("empty-grant", connections=frozenset({"gone-conn"}))
        await store.create_api_key(key)
        await store.update_api_key(attrs.evolve(key, connections=frozenset()))
        found = await store.get_api_key_by_hash(key.key_hash)
        assert found is not None
        assert found.connections == frozenset()
        assert not found.allows("gone-conn")

    async def test_aggregated_event_count_round_trips(self, audit_store: Store) -> None:
        """An event standing for repeated refusals keeps its count, and its chain verifies."""
        import uuid

        from ..models import AuditEvent
        from ..storage import verify_chain

        events = [
            AuditEvent(
                id=uuid.uuid4().hex,
                timestamp=_T0 + timedelta(milliseconds=i),
                connection="counted",
                api_key_id="key1",
                status=429,
                outcome="rate_limited",
                count=count,
            )
            for i, count in enumerate((1, 57, None))
        ]
        await audit_store.append_audit_events(events)
        chain = await audit_store.audit_chain("counted")
        assert [e.count for e in chain] == [1, 57, None]
        assert verify_chain(chain) == []
        assert "count" not in chain[2].to_json()
