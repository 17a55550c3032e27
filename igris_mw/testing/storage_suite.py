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
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import string
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from .._errors import Conflict, NotFound, SlugTaken, ValidationError, VersionConflict
from ..models import ApiKey, AuditEvent, AuthType, Connection, OAuthGrant, Scope
from ..storage import Capabilities, Change, Store, verify_chain

__all__ = [
    "T0",
    "StoreSuite",
    "make_api_key",
    "make_connection",
    "make_event",
    "make_state_machine",
]

#: The suite's epoch: every timestamp it writes is T0 plus whole milliseconds.
T0 = datetime(2025, 1, 1, tzinfo=UTC)

StoreFactory = Callable[[], "Store | Awaitable[Store]"]


def _at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def make_connection(slug: str, **changes: Any) -> Connection:
    """A valid connection with ``slug``; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "slug": slug,
        "name": f"Connection {slug}",
        "upstream_url": f"https://{slug}.example/mcp",
        "auth_type": AuthType.BEARER,
        "ciphertext": b"\x01envelope-of-" + slug.encode(),
        "created_at": _at(0),
        "updated_at": _at(0),
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
        "created_at": _at(0),
    }
    fields.update(changes)
    return ApiKey(**fields)


def make_event(connection: str, ms: int = 0, **changes: Any) -> AuditEvent:
    """An unsealed gateway audit event at ``T0 + ms`` milliseconds."""
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "timestamp": _at(ms),
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


def _unsealed(event: AuditEvent) -> AuditEvent:
    return attrs.evolve(event, seq=0, prev_hash=None, hash=None)


async def _all_connections(store: Store, limit: int) -> list[Connection]:
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


class StoreSuite:
    """Inherit under a ``Test*`` name and implement ``make_store``."""

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

    # -- protocol and lifecycle ----------------------------------------------
    async def test_implements_protocol(self, store: Store) -> None:
        """The store satisfies the Store protocol and declares its capabilities."""
        assert isinstance(store, Store)
        assert isinstance(store.capabilities, Capabilities)

    async def test_close_is_idempotent(self, store: Store) -> None:
        """Closing twice raises nothing."""
        await store.close()
        await store.close()

    async def test_shared_store_provides_a_peer(self, store: Store) -> None:
        """A store declared shared implements make_peer, so the cross-object tests run."""
        if not store.capabilities.shared:
            pytest.skip("not a shared store")
        peer = await self.make_peer(store)
        try:
            await store.create_connection(make_connection("seen-by-peer"))
            assert (await peer.get_connection("seen-by-peer")).slug == "seen-by-peer"
        finally:
            await peer.close()

    # -- connections ---------------------------------------------------------
    async def test_create_returns_stored_record(self, store: Store) -> None:
        """create_connection returns the stored record at version 1, and get returns it too."""
        given = make_connection("alpha", version=7, header_name=None)
        created = await store.create_connection(given)
        assert created == attrs.evolve(given, version=1)
        assert await store.get_connection("alpha") == created

    async def test_every_field_round_trips(self, store: Store) -> None:
        """Every Connection field is stored and read back unchanged."""
        given = make_connection(
            "all-fields",
            name="Naïve name - ünïcode ✓",
            upstream_url="http://10.0.0.1:8080/path?q=1",
            auth_type=AuthType.HEADER,
            header_name="X-Api-Key",
            enabled=False,
            credential_version=4,
            created_at=_at(1),
            updated_at=_at(2),
            rotated_at=_at(3),
        )
        await store.create_connection(given)
        assert await store.get_connection("all-fields") == attrs.evolve(given, version=1)

    async def test_oauth_object_round_trips_and_updates(self, store: Store) -> None:
        """An OAuth connection's oauth object is stored, read back and replaced by update."""
        oauth = {
            "clientId": "client-ü",
            "scopes": ["mcp:tools", "offline_access"],
            "tokenUrl": "https://as.example/token?tenant=1",
            "resource": "https://mcp.example/mcp",
        }
        given = make_connection(
            "oauth-cc", auth_type=AuthType.OAUTH2_CLIENT_CREDENTIALS, oauth=oauth
        )
        created = await store.create_connection(given)
        assert created.oauth == oauth
        assert (await store.get_connection("oauth-cc")).oauth == oauth
        changed = attrs.evolve(created, oauth={**oauth, "scopes": []})
        updated = await store.update_connection(changed, expected_version=1)
        assert (await store.get_connection("oauth-cc")).oauth == updated.oauth
        assert updated.oauth is not None
        assert updated.oauth["scopes"] == []
        plain = await store.create_connection(make_connection("not-oauth"))
        assert plain.oauth is None

    # -- OAuth grants --------------------------------------------------------
    async def test_oauth_grant_compare_and_set(self, store: Store) -> None:
        """put_oauth_grant writes only at the expected version and bumps it by one."""
        assert await store.get_oauth_grant("granted") is None
        first = OAuthGrant(
            slug="granted",
            ciphertext=bytes(range(256)),
            expires_at=_at(5),
            lifetime=3600.0,
            updated_at=_at(1),
        )
        assert await store.put_oauth_grant(first, expected_version=0)
        assert not await store.put_oauth_grant(first, expected_version=0)
        got = await store.get_oauth_grant("granted")
        assert got == attrs.evolve(first, version=1)
        claim = attrs.evolve(got, status="refreshing", lease_until=_at(9), updated_at=_at(2))
        assert not await store.put_oauth_grant(claim, expected_version=2)
        assert await store.put_oauth_grant(claim, expected_version=1)
        assert await store.get_oauth_grant("granted") == attrs.evolve(claim, version=2)
        cleared = attrs.evolve(
            claim, ciphertext=None, expires_at=None, lifetime=None, lease_until=None,
            status="reauthorization_required",
        )
        assert await store.put_oauth_grant(cleared, expected_version=2)
        assert await store.get_oauth_grant("granted") == attrs.evolve(cleared, version=3)

    async def test_oauth_grants_are_per_user_and_deleted_with_their_connection(
        self, store: Store
    ) -> None:
        """Each (slug, user) is its own row; deleting the connection deletes its grants."""
        await store.create_connection(make_connection("with-grants"))
        for user in ("", "alice", "bob ü/..", "x" * 200):
            grant = OAuthGrant(slug="with-grants", user=user, ciphertext=user.encode() or b"-",
                               updated_at=_at(1))  # fmt: skip
            assert await store.put_oauth_grant(grant, expected_version=0)
        alice = await store.get_oauth_grant("with-grants", "alice")
        assert alice is not None
        assert alice.ciphertext == b"alice"
        await store.delete_oauth_grants("with-grants", "alice")
        assert await store.get_oauth_grant("with-grants", "alice") is None
        assert await store.get_oauth_grant("with-grants", "bob ü/..") is not None
        await store.delete_connection("with-grants")
        for user in ("", "bob ü/..", "x" * 200):
            assert await store.get_oauth_grant("with-grants", user) is None

    async def test_per_user_scope_key_user_and_grant_listing_round_trip(
        self, store: Store
    ) -> None:
        """credential_scope, an API key's user, and list_oauth_grants (ordered by user)."""
        created = await store.create_connection(
            make_connection("per-user", credential_scope="per_user", ciphertext=None)
        )
        assert created.credential_scope == "per_user"
        assert (await store.get_connection("per-user")).credential_scope == "per_user"
        assert (await store.create_connection(make_connection("shared"))).credential_scope == (
            "shared"
        )
        key = await store.create_api_key(make_api_key("key_alice", user="alice ü"))
        assert key.user == "alice ü"
        assert (await store.get_api_key_by_hash(key.key_hash)) == key
        assert (await store.create_api_key(make_api_key("key_nobody"))).user is None
        for user in ("zed", "", "alice"):
            grant = OAuthGrant(slug="per-user", user=user, status="static", updated_at=_at(1))
            assert await store.put_oauth_grant(grant, expected_version=0)
        listed = await store.list_oauth_grants("per-user")
        assert [g.user for g in listed] == ["", "alice", "zed"]
        assert all(g.status == "static" for g in listed)
        assert await store.list_oauth_grants("nobody-here") == []

    async def test_concurrent_grant_writers_one_wins(self, store: Store) -> None:
        """Of 10 writers at the same expected version, exactly one writes."""
        base = OAuthGrant(slug="race", updated_at=_at(1))
        assert await store.put_oauth_grant(base, expected_version=0)
        results = await asyncio.gather(
            *(
                store.put_oauth_grant(
                    attrs.evolve(base, ciphertext=bytes([i])), expected_version=1
                )
                for i in range(10)
            )
        )
        assert results.count(True) == 1
        got = await store.get_oauth_grant("race")
        assert got is not None
        assert got.version == 2
        assert got.ciphertext == bytes([results.index(True)])

    async def test_ciphertext_bytes_round_trip(self, store: Store) -> None:
        """Ciphertext comes back byte for byte (every byte value, NULs), and None stays None."""
        blob = bytes(range(256)) * 8 + b"\x00\x00"
        await store.create_connection(make_connection("binary", ciphertext=blob))
        await store.create_connection(
            make_connection("no-credential", auth_type=AuthType.NONE, ciphertext=None)
        )
        assert (await store.get_connection("binary")).ciphertext == blob
        assert (await store.get_connection("no-credential")).ciphertext is None

    async def test_create_taken_slug_raises_and_writes_nothing(self, store: Store) -> None:
        """Creating a taken slug raises SlugTaken and leaves the stored record as it was."""
        first = await store.create_connection(make_connection("taken"))
        with pytest.raises(SlugTaken):
            await store.create_connection(make_connection("taken", name="Intruder"))
        assert await store.get_connection("taken") == first
        assert [c.slug for c in await _all_connections(store, 50)] == ["taken"]

    async def test_get_unknown_raises_not_found(self, store: Store) -> None:
        """get_connection of an unknown slug raises NotFound."""
        with pytest.raises(NotFound):
            await store.get_connection("nobody-here")

    async def test_list_empty(self, store: Store) -> None:
        """An empty store lists no connections and no next cursor."""
        page = await store.list_connections()
        assert page.items == []
        assert page.next_cursor is None

    @pytest.mark.parametrize(("count", "limit"), [(7, 3), (6, 3), (3, 3), (1, 1), (5, 50)])
    async def test_list_pages_by_slug_without_dupes_or_gaps(
        self, store: Store, count: int, limit: int
    ) -> None:
        """Paging with next_cursor yields every connection once, by slug, null cursor at the end."""
        slugs = [f"conn-{i:02d}" for i in range(count)]
        for slug in reversed(slugs):
            await store.create_connection(make_connection(slug))
        listed = await _all_connections(store, limit)
        assert [c.slug for c in listed] == slugs
        first = await store.list_connections(limit=limit)
        assert (first.next_cursor is None) == (count <= limit)

    async def test_list_cursor_survives_deletion_of_its_item(self, store: Store) -> None:
        """A cursor still works after the connection it points past is deleted."""
        for slug in ("aaa", "bbb", "ccc", "ddd"):
            await store.create_connection(make_connection(slug))
        page = await store.list_connections(limit=2)
        assert page.next_cursor is not None
        await store.delete_connection("bbb")
        rest = await store.list_connections(limit=2, cursor=page.next_cursor)
        assert [c.slug for c in rest.items] == ["ccc", "ddd"]

    @pytest.mark.parametrize(
        "cursor",
        ["garbage", "!!!", "\x00", base64.urlsafe_b64encode(b"\xff\xfe not mine").decode()],
    )
    async def test_foreign_cursor_raises_validation_error(self, store: Store, cursor: str) -> None:
        """A cursor the store did not make raises ValidationError naming 'cursor'."""
        await store.create_connection(make_connection("some-conn"))
        with pytest.raises(ValidationError) as info:
            await store.list_connections(cursor=cursor)
        assert info.value.field == "cursor"

    async def test_update_replaces_mutable_fields(self, store: Store) -> None:
        """A guarded update replaces every mutable field, bumps version and keeps created_at."""
        created = await store.create_connection(make_connection("upd", created_at=_at(5)))
        changed = make_connection(
            "upd",
            name="Renamed",
            upstream_url="https://elsewhere.example/mcp",
            auth_type=AuthType.HEADER,
            header_name="X-Token",
            enabled=False,
            ciphertext=b"new envelope",
            created_at=_at(999),
            updated_at=_at(10),
            rotated_at=_at(10),
            credential_version=2,
        )
        updated = await store.update_connection(changed, expected_version=created.version)
        assert updated == attrs.evolve(changed, created_at=_at(5), version=2)
        assert await store.get_connection("upd") == updated

    async def test_update_stale_version_conflicts_and_writes_nothing(self, store: Store) -> None:
        """An update with a stale expected_version raises VersionConflict and changes nothing."""
        created = await store.create_connection(make_connection("stale"))
        v2 = await store.update_connection(attrs.evolve(created, name="Second"), expected_version=1)
        for stale in (1, 3):
            with pytest.raises(VersionConflict):
                await store.update_connection(
                    attrs.evolve(created, name="Lost"), expected_version=stale
                )
        assert await store.get_connection("stale") == v2

    async def test_update_unknown_raises_not_found(self, store: Store) -> None:
        """Updating an unknown slug raises NotFound and creates nothing."""
        with pytest.raises(NotFound):
            await store.update_connection(make_connection("ghost"), expected_version=1)
        with pytest.raises(NotFound):
            await store.get_connection("ghost")

    async def test_concurrent_updates_one_wins(self, store: Store) -> None:
        """Of several updates racing on one version, exactly one succeeds; the rest conflict."""
        created = await store.create_connection(make_connection("race"))
        results = await asyncio.gather(
            *(
                store.update_connection(attrs.evolve(created, name=f"w{i}"), expected_version=1)
                for i in range(5)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, Connection)]
        assert len(winners) == 1
        assert all(isinstance(r, VersionConflict) for r in results if r not in winners)
        assert await store.get_connection("race") == winners[0]

    async def test_rotation_is_a_guarded_update(self, store: Store) -> None:
        """A rotation (credential_version + 1, new ciphertext) is stored like any update."""
        created = await store.create_connection(make_connection("rot", ciphertext=b"v1"))
        rotated = attrs.evolve(
            created,
            credential_version=created.credential_version + 1,
            ciphertext=b"v2",
            rotated_at=_at(50),
            updated_at=_at(50),
        )
        stored = await store.update_connection(rotated, expected_version=created.version)
        assert stored.credential_version == 2
        assert stored.ciphertext == b"v2"
        assert stored.rotated_at == _at(50)
        assert stored.version == 2
        with pytest.raises(VersionConflict):
            await store.update_connection(
                attrs.evolve(rotated, ciphertext=b"v2-late"), expected_version=created.version
            )
        assert (await store.get_connection("rot")).ciphertext == b"v2"

    async def test_delete_then_not_found(self, store: Store) -> None:
        """After delete: get and delete raise NotFound, and the slug is free again."""
        await store.create_connection(make_connection("gone"))
        await store.delete_connection("gone")
        with pytest.raises(NotFound):
            await store.get_connection("gone")
        with pytest.raises(NotFound):
            await store.delete_connection("gone")
        again = await store.create_connection(make_connection("gone", name="Again"))
        assert again.version == 1
        assert again.name == "Again"

    async def test_delete_unknown_raises_not_found(self, store: Store) -> None:
        """Deleting an unknown slug raises NotFound."""
        with pytest.raises(NotFound):
            await store.delete_connection("never-was")

    # -- API keys ----------------------------------------------------------
    async def test_api_key_create_and_lookup_by_hash(self, store: Store) -> None:
        """An API key comes back from lookup by hash with every field intact."""
        key = make_api_key(
            "k1",
            scopes=frozenset({Scope.ADMIN, Scope.MCP}),
            connections=frozenset({"one", "two"}),
            expires_at=_at(86_400_000),
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
        keys = [make_api_key(name, created_at=_at(i)) for i, name in enumerate("zyxwv")]
        for key in (keys[2], keys[0], keys[4], keys[1], keys[3]):
            await store.create_api_key(key)
        revoked = await store.revoke_api_key("x", at=_at(100))
        listed = await store.list_api_keys()
        assert [k.id for k in listed] == ["z", "y", "x", "w", "v"]
        assert listed[2] == revoked

    async def test_revoke_sets_revoked_at_once(self, store: Store) -> None:
        """revoke sets revoked_at once (a second revoke keeps it); lookup still returns the key."""
        key = make_api_key("rk")
        await store.create_api_key(key)
        revoked = await store.revoke_api_key("rk", at=_at(10))
        assert revoked == attrs.evolve(key, revoked_at=_at(10))
        again = await store.revoke_api_key("rk", at=_at(20))
        assert again.revoked_at == _at(10)
        assert await store.get_api_key_by_hash(key.key_hash) == revoked

    async def test_revoke_unknown_raises_not_found(self, store: Store) -> None:
        """Revoking an unknown key id raises NotFound."""
        with pytest.raises(NotFound):
            await store.revoke_api_key("no-such-key", at=_at(0))

    # -- listeners ---------------------------------------------------------
    async def test_listeners_hear_every_write(self, store: Store) -> None:
        """Every listener hears each committed connection and API-key write, in order."""
        heard: list[Change] = []
        also: list[Change] = []
        store.add_listener(heard.append)
        store.add_listener(also.append)
        created = await store.create_connection(make_connection("heard"))
        await store.update_connection(attrs.evolve(created, name="N"), expected_version=1)
        await store.delete_connection("heard")
        await store.create_api_key(make_api_key("lk"))
        await store.revoke_api_key("lk", at=_at(1))
        expected = [
            Change("connection", "heard"),
            Change("connection", "heard"),
            Change("connection", "heard"),
            Change("api_key", "lk"),
            Change("api_key", "lk"),
        ]
        assert heard == expected
        assert also == expected

    async def test_listeners_not_called_for_failed_writes(self, store: Store) -> None:
        """A write that raises (taken slug, stale version, unknown key) notifies no one."""
        await store.create_connection(make_connection("quiet"))
        heard: list[Change] = []
        store.add_listener(heard.append)
        with pytest.raises(SlugTaken):
            await store.create_connection(make_connection("quiet"))
        with pytest.raises(VersionConflict):
            await store.update_connection(make_connection("quiet"), expected_version=9)
        with pytest.raises(NotFound):
            await store.delete_connection("absent")
        with pytest.raises(NotFound):
            await store.revoke_api_key("absent", at=_at(0))
        assert heard == []

    async def test_listener_sees_the_committed_write(self, store: Store) -> None:
        """When a listener runs, the write it hears of is already visible to readers."""
        seen: list[asyncio.Task[Connection]] = []
        store.add_listener(
            lambda change: seen.append(asyncio.ensure_future(store.get_connection(str(change.key))))
        )
        await store.create_connection(make_connection("visible"))
        assert len(seen) == 1
        assert (await seen[0]).slug == "visible"

    async def test_listener_failure_does_not_fail_the_write(self, store: Store) -> None:
        """A listener that raises neither fails the committed write nor stops later listeners."""
        heard: list[Change] = []

        def broken(change: Change) -> None:
            raise RuntimeError("listener bug")

        store.add_listener(broken)
        store.add_listener(heard.append)
        created = await store.create_connection(make_connection("still-written"))
        assert await store.get_connection("still-written") == created
        assert len(heard) == 1

    async def test_remote_writes_reach_listeners(self, store: Store, peer: Store) -> None:
        """With notifies_remote, a write through another object reaches this one's listeners."""
        if not store.capabilities.notifies_remote:
            pytest.skip("this store does not notify remote writes")
        heard: asyncio.Queue[Change] = asyncio.Queue()
        store.add_listener(heard.put_nowait)
        await peer.create_connection(make_connection("remote"))
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            change = await asyncio.wait_for(heard.get(), timeout=max(remaining, 0.01))
            if change.kind == "all" or change == Change("connection", "remote"):
                break

    # -- audit -------------------------------------------------------------
    async def test_audit_batch_forms_a_valid_chain(self, audit_store: Store) -> None:
        """An appended batch is sealed into a valid chain with seq 1..n, events intact."""
        events = [make_event("chain", i, user=f"u{i}", metadata={"i": i}) for i in range(5)]
        await audit_store.append_audit_events(events)
        chain = await audit_store.audit_chain("chain")
        assert [e.seq for e in chain] == [1, 2, 3, 4, 5]
        assert verify_chain(chain) == []
        assert [_unsealed(e) for e in chain] == events

    async def test_audit_chain_continues_across_batches(self, audit_store: Store) -> None:
        """A later batch chains onto the last stored event of each connection separately."""
        await audit_store.append_audit_events([make_event("one", 0), make_event("two", 1)])
        await audit_store.append_audit_events(
            [make_event("one", 2), make_event("two", 3), make_event("one", 4)]
        )
        one = await audit_store.audit_chain("one")
        two = await audit_store.audit_chain("two")
        assert [e.seq for e in one] == [1, 2, 3]
        assert [e.seq for e in two] == [1, 2]
        assert verify_chain(one) == []
        assert verify_chain(two) == []
        assert await audit_store.audit_connections() == ["one", "two"]

    async def test_audit_event_fields_round_trip(self, audit_store: Store) -> None:
        """Every audit field survives storage, and a microsecond timestamp keeps the chain valid."""
        event = make_event(
            "fields",
            kind="management",
            action="rotate",
            user="alice@example.com",
            metadata={"role": "dev", "nested": {"a": [1, 2.5, None, True]}, "ü": "✓"},
            outcome="denied",
            status=403,
            latency_ms=0.25,
            credential_version=None,
            timestamp=_at(7) + timedelta(microseconds=123),
        )
        bare = make_event(
            "fields",
            8,
            api_key_id=None,
            method=None,
            path=None,
            rpc_method=None,
            tool=None,
            status=None,
            latency_ms=None,
        )
        await audit_store.append_audit_events([event, bare])
        chain = await audit_store.audit_chain("fields")
        assert verify_chain(chain) == []
        stored, stored_bare = chain
        assert stored.to_json() | {"seq": 0, "prevHash": None, "hash": None} == event.to_json()
        assert _unsealed(stored_bare) == bare

    async def test_audit_duplicate_ids_are_no_ops(self, audit_store: Store) -> None:
        """Re-appending events whose ids are stored (or repeated in a batch) adds nothing."""
        events = [make_event("dupe", i) for i in range(3)]
        await audit_store.append_audit_events(events)
        before = await audit_store.audit_chain("dupe")
        extra = make_event("dupe", 9)
        await audit_store.append_audit_events([*events, extra, extra])
        after = await audit_store.audit_chain("dupe")
        assert after[:3] == before
        assert [e.id for e in after] == [*(e.id for e in events), extra.id]
        assert verify_chain(after) == []

    async def test_audit_listed_newest_first_with_cursor(self, audit_store: Store) -> None:
        """list_audit_events pages newest first through every event, once each."""
        events = [make_event("paged", i) for i in range(7)]
        await audit_store.append_audit_events(events)
        await audit_store.append_audit_events([make_event("other", 0)])
        seen: list[AuditEvent] = []
        cursor: str | None = None
        while True:
            page = await audit_store.list_audit_events("paged", limit=3, cursor=cursor)
            seen.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [e.seq for e in seen] == [7, 6, 5, 4, 3, 2, 1]
        assert [e.id for e in seen] == [e.id for e in reversed(events)]

    async def test_audit_since_filter(self, audit_store: Store) -> None:
        """since keeps only events at or after the given time."""
        await audit_store.append_audit_events([make_event("since", i * 1000) for i in range(5)])
        page = await audit_store.list_audit_events("since", since=_at(2000))
        assert [e.timestamp for e in page.items] == [_at(4000), _at(3000), _at(2000)]
        later = await audit_store.list_audit_events("since", since=_at(10_000))
        assert later.items == []
        assert later.next_cursor is None

    async def test_audit_list_of_unknown_connection_is_empty(self, audit_store: Store) -> None:
        """A connection without events lists an empty page and an empty chain."""
        page = await audit_store.list_audit_events("silent")
        assert page.items == []
        assert page.next_cursor is None
        assert await audit_store.audit_chain("silent") == []

    @pytest.mark.parametrize(
        "cursor", ["garbage", "!!!", base64.urlsafe_b64encode(b"junk").decode()]
    )
    async def test_audit_foreign_cursor_raises_validation_error(
        self, audit_store: Store, cursor: str
    ) -> None:
        """An audit cursor the store did not make raises ValidationError naming 'cursor'."""
        await audit_store.append_audit_events([make_event("cur", 0)])
        with pytest.raises(ValidationError) as info:
            await audit_store.list_audit_events("cur", cursor=cursor)
        assert info.value.field == "cursor"

    async def test_audit_chain_after_seq_and_limit(self, audit_store: Store) -> None:
        """audit_chain returns events after a seq, oldest first, at most limit of them."""
        await audit_store.append_audit_events([make_event("tail", i) for i in range(6)])
        tail = await audit_store.audit_chain("tail", after_seq=2, limit=3)
        assert [e.seq for e in tail] == [3, 4, 5]
        full = await audit_store.audit_chain("tail")
        assert verify_chain(tail, previous=full[1]) == []

    async def test_audit_stays_after_delete(self, audit_store: Store) -> None:
        """Deleting a connection keeps its audit trail."""
        await audit_store.create_connection(make_connection("kept"))
        await audit_store.append_audit_events([make_event("kept", 0), make_event("kept", 1)])
        await audit_store.delete_connection("kept")
        assert len(await audit_store.audit_chain("kept")) == 2
        assert "kept" in await audit_store.audit_connections()

    async def test_concurrent_appenders_keep_one_chain(self, audit_store: Store) -> None:
        """Concurrent appends to one connection give unique seqs and a valid chain."""
        n = self.concurrent_writers
        batches = [[make_event("busy", i * 10 + j) for j in range(5)] for i in range(n)]
        await asyncio.gather(*(audit_store.append_audit_events(b) for b in batches))
        chain = await audit_store.audit_chain("busy", limit=10_000)
        assert [e.seq for e in chain] == list(range(1, 5 * n + 1))
        assert verify_chain(chain) == []

    async def test_concurrent_appenders_on_two_objects(
        self, audit_store: Store, peer: Store
    ) -> None:
        """Appends racing through two store objects on the same data keep one valid chain."""
        n = self.concurrent_writers
        batches = [[make_event("both", i * 10 + j) for j in range(5)] for i in range(n)]
        await asyncio.gather(
            *(
                (audit_store if i % 2 else peer).append_audit_events(b)
                for i, b in enumerate(batches)
            )
        )
        chain = await audit_store.audit_chain("both", limit=10_000)
        assert [e.seq for e in chain] == list(range(1, 5 * n + 1))
        assert verify_chain(chain) == []


# -- the model-based state machine --------------------------------------------

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
        return _at(self.clock)

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
        listed = self._run(_all_connections(self.store, limit))
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
        assert [_unsealed(e) for e in chain] == self.events[slug]
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
