"""The storage suite's model-based state machine (hypothesis' DatabaseComparison).

A store runs random programs of operations next to a dict model; every
answer must agree. ``make_state_machine`` is public through
``igris_mw.testing.storage_suite``.
"""

from __future__ import annotations

import asyncio
import inspect
import string
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from .._errors import Conflict, NotFound, SlugTaken, VersionConflict
from ..models import ApiKey, AuditEvent, Connection, Scope
from ..storage import Store, verify_chain
from ._suite_data import all_connections, at, make_api_key, make_connection, make_event, unsealed

__all__ = ["StoreMachine", "make_state_machine"]

_SLUGS = st.sampled_from(["aaa", "bbb", "ccc", "ddd", "eee"])
_KEY_IDS = st.sampled_from(["k1", "k2", "k3", "k4"])
_HASHES = st.sampled_from([bytes([i]) * 32 for i in range(4)])
_TEXT = st.text(alphabet=string.ascii_letters + " ", min_size=1, max_size=12)


class StoreMachine(RuleBasedStateMachine):
    """Runs the same operations on a store and on a dict model and checks they agree.

    hypothesis' DatabaseComparison pattern. Subclasses set ``store_factory``
    (see ``make_state_machine``). Coroutines run on a private event loop.
    """

    store_factory: ClassVar[Callable[[], Any]]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store: Store = self._run(self._make())
        self.conns: dict[str, Connection] = {}
        self.keys: dict[str, ApiKey] = {}
        self.events: dict[str, list[AuditEvent]] = {}
        self.clock = 0

    async def _make(self) -> Store:
        made = type(self).store_factory()
        store: Store = await made if inspect.isawaitable(made) else made
        return store

    def _run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def _tick(self) -> datetime:
        self.clock += 1
        return at(self.clock)

    def teardown(self) -> None:
        try:
            self._run(self.store.close())
        finally:
            self.loop.close()

    # -- connections ---------------------------------------------------------
    @rule(slug=_SLUGS, name=_TEXT, ciphertext=st.binary(max_size=40))
    def create(self, slug: str, name: str, ciphertext: bytes) -> None:
        now = self._tick()
        conn = make_connection(
            slug, name=name, ciphertext=ciphertext, created_at=now, updated_at=now
        )
        if slug in self.conns:
            with pytest.raises(SlugTaken):
                self._run(self.store.create_connection(conn))
            return
        self.conns[slug] = attrs.evolve(conn, version=1)
        assert self._run(self.store.create_connection(conn)) == self.conns[slug]

    @rule(slug=_SLUGS)
    def get(self, slug: str) -> None:
        if slug not in self.conns:
            with pytest.raises(NotFound):
                self._run(self.store.get_connection(slug))
            return
        assert self._run(self.store.get_connection(slug)) == self.conns[slug]

    @rule(slug=_SLUGS, name=_TEXT, enabled=st.booleans(), skew=st.sampled_from([0, 0, -1, 1]))
    def update(self, slug: str, name: str, enabled: bool, skew: int) -> None:
        now = self._tick()
        old = self.conns.get(slug)
        base = old if old is not None else make_connection(slug)
        new = attrs.evolve(base, name=name, enabled=enabled, updated_at=now, created_at=now)
        expected = base.version + skew
        if old is None:
            with pytest.raises(NotFound):
                self._run(self.store.update_connection(new, expected_version=expected))
        elif skew:
            with pytest.raises(VersionConflict):
                self._run(self.store.update_connection(new, expected_version=expected))
        else:
            model = attrs.evolve(new, created_at=old.created_at, version=old.version + 1)
            self.conns[slug] = model
            assert self._run(self.store.update_connection(new, expected_version=expected)) == model

    @precondition(lambda self: bool(self.conns))
    @rule(data=st.data(), ciphertext=st.binary(max_size=40))
    def rotate(self, data: st.DataObject, ciphertext: bytes) -> None:
        slug = data.draw(st.sampled_from(sorted(self.conns)), label="slug")
        old = self.conns[slug]
        now = self._tick()
        new = attrs.evolve(
            old,
            credential_version=old.credential_version + 1,
            ciphertext=ciphertext,
            rotated_at=now,
            updated_at=now,
        )
        model = attrs.evolve(new, version=old.version + 1)
        self.conns[slug] = model
        assert self._run(self.store.update_connection(new, expected_version=old.version)) == model

    @rule(slug=_SLUGS)
    def delete(self, slug: str) -> None:
        if slug not in self.conns:
            with pytest.raises(NotFound):
                self._run(self.store.delete_connection(slug))
            return
        del self.conns[slug]
        self._run(self.store.delete_connection(slug))

    @rule(limit=st.integers(1, 4))
    def list_all(self, limit: int) -> None:
        listed = self._run(all_connections(self.store, limit))
        assert listed == [self.conns[s] for s in sorted(self.conns)]

    # -- API keys ----------------------------------------------------------
    @rule(key_id=_KEY_IDS, key_hash=_HASHES, admin=st.booleans())
    def create_key(self, key_id: str, key_hash: bytes, admin: bool) -> None:
        key = make_api_key(
            key_id,
            key_hash=key_hash,
            scopes=frozenset({Scope.ADMIN if admin else Scope.MCP}),
            connections=None if admin else frozenset({"aaa"}),
            created_at=self._tick(),
        )
        if key_id in self.keys or any(k.key_hash == key_hash for k in self.keys.values()):
            with pytest.raises(Conflict):
                self._run(self.store.create_api_key(key))
            return
        self.keys[key_id] = key
        assert self._run(self.store.create_api_key(key)) == key

    @rule(key_id=_KEY_IDS)
    def revoke_key(self, key_id: str) -> None:
        now = self._tick()
        if key_id not in self.keys:
            with pytest.raises(NotFound):
                self._run(self.store.revoke_api_key(key_id, at=now))
            return
        old = self.keys[key_id]
        self.keys[key_id] = attrs.evolve(old, revoked_at=old.revoked_at or now)
        assert self._run(self.store.revoke_api_key(key_id, at=now)) == self.keys[key_id]

    @rule(key_hash=_HASHES)
    def lookup_key(self, key_hash: bytes) -> None:
        found = [k for k in self.keys.values() if k.key_hash == key_hash]
        assert self._run(self.store.get_api_key_by_hash(key_hash)) == (found[0] if found else None)

    @rule()
    def list_keys(self) -> None:
        # Keys are created with strictly increasing created_at, so the model's
        # insertion order is the contract's "oldest first".
        assert self._run(self.store.list_api_keys()) == list(self.keys.values())

    # -- audit -------------------------------------------------------------
    @precondition(lambda self: self.store.capabilities.audit)
    @rule(slug=_SLUGS, count=st.integers(1, 3))
    def append_audit(self, slug: str, count: int) -> None:
        batch = []
        for _ in range(count):
            self._tick()
            batch.append(make_event(slug, self.clock))
        self.events.setdefault(slug, []).extend(batch)
        self._run(self.store.append_audit_events(batch))
        chain = self._run(self.store.audit_chain(slug))
        assert [unsealed(e) for e in chain] == self.events[slug]
        assert verify_chain(chain) == []
        assert self._run(self.store.audit_connections()) == sorted(self.events)


def make_state_machine(
    store_factory: Callable[[], Store | Awaitable[Store]],
    *,
    max_examples: int = 25,
    stateful_step_count: int = 20,
) -> type[Any]:
    """A unittest ``TestCase`` class running ``StoreMachine`` on a backend.

    Assign it to a ``Test*`` name in the backend's test module.

    Args:
        store_factory: returns (or, if async, resolves to) a fresh, opened,
            empty store; called once per example, on the machine's own loop.
        max_examples: hypothesis examples (programs) to run.
        stateful_step_count: operations per example.
    """
    machine: Any = type(
        "StoreMachine", (StoreMachine,), {"store_factory": staticmethod(store_factory)}
    )
    case: type[Any] = machine.TestCase
    case.settings = settings(
        max_examples=max_examples,
        stateful_step_count=stateful_step_count,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    return case
