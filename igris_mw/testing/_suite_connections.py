"""The storage suite: lifecycle, connections and change listeners."""

from __future__ import annotations

import asyncio
import base64

import attrs
import pytest

from .._errors import NotFound, SlugTaken, ValidationError, VersionConflict
from ..models import AuthType, Connection, TlsConfig
from ..storage import Capabilities, Change, Store
from ._suite_base import SuiteBase
from ._suite_data import all_connections, at, make_api_key, make_connection

__all__ = ["ConnectionTests"]


class ConnectionTests(SuiteBase):
    """Lifecycle, connection CRUD, guarded updates, paging and listeners."""

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
            created_at=at(1),
            updated_at=at(2),
            rotated_at=at(3),
        )
        await store.create_connection(given)
        assert await store.get_connection("all-fields") == attrs.evolve(given, version=1)

    async def test_ciphertext_bytes_round_trip(self, store: Store) -> None:
        """Ciphertext comes back byte for byte (every byte value, NULs), and None stays None."""
        blob = bytes(range(256)) * 8 + b"\x00\x00"
        await store.create_connection(make_connection("binary", ciphertext=blob))
        await store.create_connection(
            make_connection("no-credential", auth_type=AuthType.NONE, ciphertext=None)
        )
        assert (await store.get_connection("binary")).ciphertext == blob
        assert (await store.get_connection("no-credential")).ciphertext is None

    async def test_tls_settings_round_trip(self, store: Store) -> None:
        """A connection's TLS material (CA, client chain, sealed key bytes) reads back
        unchanged, is replaced by an update, and can be removed."""
        pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        tls = TlsConfig(
            ca_certificate=pem,
            client_certificate=pem + pem,
            client_key_ciphertext=bytes(range(256)) + b"\x00",
        )
        created = await store.create_connection(make_connection("mtls", tls=tls))
        assert (await store.get_connection("mtls")).tls == tls
        only_ca = TlsConfig(ca_certificate=pem)
        await store.update_connection(
            attrs.evolve(created, tls=only_ca), expected_version=created.version
        )
        updated = await store.get_connection("mtls")
        assert updated.tls == only_ca
        await store.update_connection(attrs.evolve(updated, tls=None), expected_version=2)
        assert (await store.get_connection("mtls")).tls is None
        assert (await store.create_connection(make_connection("plain"))).tls is None

    async def test_create_taken_slug_raises_and_writes_nothing(self, store: Store) -> None:
        """Creating a taken slug raises SlugTaken and leaves the stored record as it was."""
        first = await store.create_connection(make_connection("taken"))
        with pytest.raises(SlugTaken):
            await store.create_connection(make_connection("taken", name="Intruder"))
        assert await store.get_connection("taken") == first
        assert [c.slug for c in await all_connections(store, 50)] == ["taken"]

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
        listed = await all_connections(store, limit)
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
        created = await store.create_connection(make_connection("upd", created_at=at(5)))
        changed = make_connection(
            "upd",
            name="Renamed",
            upstream_url="https://elsewhere.example/mcp",
            auth_type=AuthType.HEADER,
            header_name="X-Token",
            enabled=False,
            ciphertext=b"new envelope",
            created_at=at(999),
            updated_at=at(10),
            rotated_at=at(10),
            credential_version=2,
        )
        updated = await store.update_connection(changed, expected_version=created.version)
        assert updated == attrs.evolve(changed, created_at=at(5), version=2)
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
            rotated_at=at(50),
            updated_at=at(50),
        )
        stored = await store.update_connection(rotated, expected_version=created.version)
        assert stored.credential_version == 2
        assert stored.ciphertext == b"v2"
        assert stored.rotated_at == at(50)
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
        await store.revoke_api_key("lk", at=at(1))
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
            await store.revoke_api_key("absent", at=at(0))
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
