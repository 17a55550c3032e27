"""The storage suite's hooks and fixtures, shared by its groups of tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest

from ..storage import Store

__all__ = ["SuiteBase"]


class SuiteBase:
    """What every group of the suite relies on; ``StoreSuite`` is the one to inherit."""

    #: how many concurrent appenders the audit concurrency tests start
    concurrent_writers: ClassVar[int] = 8

    tmp_path: Path
    request: pytest.FixtureRequest

    # -- hooks -------------------------------------------------------------
    async def make_store(self) -> Store:
        """A fresh, opened, empty store (the suite closes it)."""
        raise NotImplementedError("a StoreSuite subclass must implement make_store")

    async def make_peer(self, store: Store) -> Store:
        """Another opened store object over the same data as ``store``."""
        pytest.skip("this backend provides no peer store (make_peer)")

    # -- fixtures ----------------------------------------------------------
    @pytest.fixture
    async def store(self, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
        """The store under test, closed afterwards."""
        self.tmp_path = tmp_path
        self.request = request
        s = await self.make_store()
        try:
            yield s
        finally:
            await s.close()

    @pytest.fixture
    async def peer(self, store: Store) -> AsyncIterator[Store]:
        """A second store object over the same data, closed afterwards."""
        p = await self.make_peer(store)
        try:
            yield p
        finally:
            await p.close()

    @pytest.fixture
    def audit_store(self, store: Store) -> Store:
        """The store, for tests that need it to keep the audit trail."""
        if not store.capabilities.audit:
            pytest.skip("this store does not keep the audit trail (capabilities.audit=False)")
        return store
