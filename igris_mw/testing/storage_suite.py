"""The conformance suite every ``Store`` runs.

In the manner of SQLAlchemy's dialect suite: a backend's test module
subclasses ``StoreSuite`` under a ``Test*`` name and implements
``make_store``; pytest collects the inherited tests. The same module builds
the model-based state machine with ``make_state_machine``::

    import pytest
    from igris_mw.testing.storage_suite import StoreSuite, make_state_machine
    from my_backend import MyStore

    class TestMyStore(StoreSuite):
        async def make_store(self):            # fresh, opened, empty
            store = MyStore.from_url(f"my://{self.tmp_path}/db")
            await store.open()
            return store

        async def make_peer(self, store):      # optional: a 2nd object, same data
            peer = MyStore.from_url(store.url)
            await peer.open()
            return peer

    TestMyStoreModel = make_state_machine(fresh_opened_empty_store)  # sync or async factory

Hooks: ``make_store()`` (required) returns a fresh, opened, empty store;
the suite closes it. ``self.tmp_path`` (a new directory per test) and
``self.request`` (the pytest ``FixtureRequest``, for ``getfixturevalue``)
are set before it is called. ``make_peer(store)`` (optional) returns another
opened store object over the same data; without it, the cross-object tests
skip, and a ``shared`` store must provide it.

Capability flags come from ``store.capabilities``: ``audit=False`` skips the
audit tests; ``notifies_remote=True`` adds the test that a write through the
peer reaches the first object's listeners.

Test data uses millisecond-precision UTC timestamps, the precision every
store keeps. Needs pytest-asyncio (``asyncio_mode = "auto"``) and hypothesis.

The tests live in groups, one module each, and ``StoreSuite`` inherits them
all: ``_suite_connections`` (lifecycle, connections, listeners),
``_suite_keys`` (API keys), ``_suite_audit`` (the audit trail),
``_suite_audit_keys`` (keyed chains, signed heads, the global chain) and
``_suite_machine`` (the state machine); ``_suite_data`` makes the records.
Import every name from this module: the split is not part of the interface.
"""

from __future__ import annotations

from ._suite_audit import AuditTests
from ._suite_audit_keys import AuditKeyTests
from ._suite_connections import ConnectionTests
from ._suite_data import T0, StoreFactory, make_api_key, make_connection, make_event
from ._suite_keys import ApiKeyTests
from ._suite_machine import StoreMachine, make_state_machine
from ._suite_oauth import OAuthGrantTests
from ._suite_policy import PolicySuite

__all__ = [
    "T0",
    "StoreFactory",
    "StoreMachine",
    "StoreSuite",
    "make_api_key",
    "make_connection",
    "make_event",
    "make_state_machine",
]


class StoreSuite(
    ConnectionTests, ApiKeyTests, AuditTests, AuditKeyTests, PolicySuite, OAuthGrantTests
):
    """Inherit under a ``Test*`` name and implement ``make_store``."""
