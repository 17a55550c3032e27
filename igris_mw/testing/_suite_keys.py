"""The storage suite: gateway API key records."""

from __future__ import annotations

import attrs
import pytest

from .._errors import Conflict, NotFound
from ..models import Scope
from ..storage import Store
from ._suite_base import SuiteBase
from ._suite_data import at, make_api_key

__all__ = ["ApiKeyTests"]


class ApiKeyTests(SuiteBase):
    """API key records: create, lookup by hash, list, revoke."""

    # -- API keys ----------------------------------------------------------
    async def test_api_key_create_and_lookup_by_hash(self, store: Store) -> None:
        """An API key comes back from lookup by hash with every field intact."""
        key = make_api_key(
            "k1",
            scopes=frozenset({Scope.ADMIN, Scope.MCP}),
            connections=frozenset({"one", "two"}),
            expires_at=at(86_400_000),
        )
        assert await store.create_api_key(key) == key
        assert await store.get_api_key_by_hash(key.key_hash) == key
        plain = make_api_key("k2", connections=None)
        await store.create_api_key(plain)
        assert await store.get_api_key_by_hash(plain.key_hash) == plain
        empty = make_api_key("k3", connections=frozenset())
        await store.create_api_key(empty)
        assert (await store.get_api_key_by_hash(empty.key_hash)) == empty

    async def test_api_key_lookup_unknown_is_none(self, store: Store) -> None:
        """Looking up an unknown hash returns None."""
        await store.create_api_key(make_api_key("k1"))
        assert await store.get_api_key_by_hash(b"\x00" * 32) is None

    async def test_api_key_duplicates_conflict(self, store: Store) -> None:
        """A second key with a taken id or a taken hash raises Conflict; nothing is added."""
        first = make_api_key("dup")
        await store.create_api_key(first)
        with pytest.raises(Conflict):
            await store.create_api_key(make_api_key("dup", key_hash=b"h" * 32))
        with pytest.raises(Conflict):
            await store.create_api_key(make_api_key("other", key_hash=first.key_hash))
        assert await store.list_api_keys() == [first]

    async def test_api_keys_listed_oldest_first(self, store: Store) -> None:
        """list_api_keys returns every key, revoked included, oldest first."""
        keys = [make_api_key(name, created_at=at(i)) for i, name in enumerate("zyxwv")]
        for key in (keys[2], keys[0], keys[4], keys[1], keys[3]):
            await store.create_api_key(key)
        revoked = await store.revoke_api_key("x", at=at(100))
        listed = await store.list_api_keys()
        assert [k.id for k in listed] == ["z", "y", "x", "w", "v"]
        assert listed[2] == revoked

    async def test_revoke_sets_revoked_at_once(self, store: Store) -> None:
        """revoke sets revoked_at once (a second revoke keeps it); lookup still returns the key."""
        key = make_api_key("rk")
        await store.create_api_key(key)
        revoked = await store.revoke_api_key("rk", at=at(10))
        assert revoked == attrs.evolve(key, revoked_at=at(10))
        again = await store.revoke_api_key("rk", at=at(20))
        assert again.revoked_at == at(10)
        assert await store.get_api_key_by_hash(key.key_hash) == revoked

    async def test_revoke_unknown_raises_not_found(self, store: Store) -> None:
        """Revoking an unknown key id raises NotFound."""
        with pytest.raises(NotFound):
            await store.revoke_api_key("no-such-key", at=at(0))
