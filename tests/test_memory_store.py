"""MemoryStore passes the store conformance suite and agrees with the dict model."""

from __future__ import annotations

import pytest

from igris_mw import ConfigurationError
from igris_mw._plugins import store_from_url
from igris_mw.storage import Store
from igris_mw.testing import MemoryStore
from igris_mw.testing.storage_suite import StoreSuite, make_state_machine


class TestMemoryStore(StoreSuite):
    async def make_store(self) -> Store:
        store = MemoryStore.from_url("memory://")
        await store.open()
        return store


TestMemoryStoreModel = make_state_machine(MemoryStore, max_examples=100)


def test_memory_url_loads_through_entry_point() -> None:
    """store_from_url('memory://') builds a MemoryStore through the plug-in registry."""
    assert isinstance(store_from_url("memory://"), MemoryStore)


def test_from_url_refuses_other_schemes() -> None:
    """MemoryStore.from_url refuses a URL that is not memory://."""
    with pytest.raises(ConfigurationError):
        MemoryStore.from_url("sqlite:///x.db")
