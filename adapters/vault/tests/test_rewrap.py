"""rewrap_all: every stored envelope moved to the primary key, online and version-guarded."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from igris_mw_vault import TransitProvider, rewrap_all
from igris_mw_vault.testing import BaoDevServer

from igris_mw.crypto import binding
from igris_mw.errors import VersionConflict
from igris_mw.models import Connection
from igris_mw.testing._memory import MemoryStore
from igris_mw.testing.storage_suite import make_connection


def _ad(conn: Connection) -> bytes:
    return binding(conn.slug, conn.credential_version, conn.upstream_url, conn.auth_type.value)


async def _seed(store: Any, transit: TransitProvider, count: int) -> list[Connection]:
    out = []
    for i in range(count):
        conn = make_connection(f"conn-{i:02d}", ciphertext=None)
        conn = attrs.evolve(conn, ciphertext=await transit.encrypt(f"cred-{i}".encode(), _ad(conn)))
        out.append(await store.create_connection(conn))
    return out


def _transit(bao: BaoDevServer, key: str) -> TransitProvider:
    return TransitProvider.from_url(
        f"vault-transit://{bao.hostport}/transit/{key}?tls=false", {"VAULT_TOKEN": bao.root_token}
    )


async def test_rewrap_all_after_rotation(bao: BaoDevServer, transit_key: str) -> None:
    """After a Transit rotation every envelope moves to v2, same plaintext; a rerun moves none."""
    store = MemoryStore()
    await store.open()
    transit = _transit(bao, transit_key)
    try:
        await _seed(store, transit, 5)
        await store.create_connection(make_connection("no-cred", ciphertext=None))
        assert await transit.rotate() == f"{transit_key}:v2"
        assert await rewrap_all(store, transit) == 5
        page = await store.list_connections(limit=50)
        sealed = [c for c in page.items if c.ciphertext is not None]
        assert len(sealed) == 5
        for conn in sealed:
            assert conn.ciphertext is not None
            assert transit.key_id_of(conn.ciphertext) == f"{transit_key}:v2"
            assert conn.version == 2
            index = int(conn.slug.rsplit("-", 1)[1])
            assert await transit.decrypt(conn.ciphertext, _ad(conn)) == f"cred-{index}".encode()
        assert await rewrap_all(store, transit) == 0
    finally:
        await transit.aclose()
        await store.close()


class _RacingStore(MemoryStore):
    """The first guarded update loses a race with a concurrent rename."""

    raced = False

    async def update_connection(
        self, connection: Connection, *, expected_version: int
    ) -> Connection:
        if not self.raced:
            self.raced = True
            current = await self.get_connection(connection.slug)
            await super().update_connection(
                attrs.evolve(current, name="renamed meanwhile"), expected_version=current.version
            )
        return await super().update_connection(connection, expected_version=expected_version)


async def test_rewrap_retries_a_lost_race(bao: BaoDevServer, transit_key: str) -> None:
    """A concurrent edit makes the guarded write conflict; rewrap re-reads and keeps that edit."""
    store = _RacingStore()
    await store.open()
    transit = _transit(bao, transit_key)
    try:
        [conn] = await _seed(store, transit, 1)
        await transit.rotate()
        assert await rewrap_all(store, transit) == 1
        stored = await store.get_connection(conn.slug)
        assert stored.name == "renamed meanwhile"
        assert stored.ciphertext is not None
        assert transit.key_id_of(stored.ciphertext) == f"{transit_key}:v2"
        assert await transit.decrypt(stored.ciphertext, _ad(stored)) == b"cred-0"
    finally:
        await transit.aclose()
        await store.close()


class _AlwaysRacing(MemoryStore):
    async def update_connection(
        self, connection: Connection, *, expected_version: int
    ) -> Connection:
        raise VersionConflict("always")


async def test_rewrap_gives_up_after_retries(bao: BaoDevServer, transit_key: str) -> None:
    """A record that changes on every attempt ends in VersionConflict, not a loop."""
    store = _AlwaysRacing()
    await store.open()
    transit = _transit(bao, transit_key)
    try:
        await _seed(store, transit, 1)
        await transit.rotate()
        with pytest.raises(VersionConflict, match="run it again"):
            await rewrap_all(store, transit)
    finally:
        await transit.aclose()
        await store.close()
