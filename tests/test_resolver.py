"""Tests for igris_mw._resolver.Resolver: key and connection resolution, its caches and
their invalidation, driven directly (no ASGI, no upstream)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from igris_mw._auth import generate_key
from igris_mw._errors import CryptoUnavailable, Unauthorized
from igris_mw._policy.egress import EgressPolicy
from igris_mw._resolver import MISSING, Resolver, _Resolved
from igris_mw._service import Service
from igris_mw.storage import Change
from igris_mw.testing import FixedKeyring, MemoryStore

CREDENTIAL = "upstream-canary-5b1e0d"

LOOPBACK = EgressPolicy.from_setting("127.0.0.0/8")  # the test upstreams


class CountingStore(MemoryStore):
    """A MemoryStore that counts the reads the resolver makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get_connection(self, slug: str) -> Any:
        self.reads += 1
        return await super().get_connection(slug)

    async def get_api_key_by_hash(self, key_hash: bytes) -> Any:
        self.reads += 1
        return await super().get_api_key_by_hash(key_hash)


class CountingKeyring(FixedKeyring):
    """A keyring that counts unwraps (decryptions)."""

    __slots__ = ("unwraps",)

    def __init__(self, *names: str) -> None:
        super().__init__(*names)
        self.unwraps = 0

    def decrypt_sync(self, envelope: bytes, associated_data: bytes) -> bytes:
        self.unwraps += 1
        return super().decrypt_sync(envelope, associated_data)


class Setup:
    def __init__(self, ttl: float = 5.0, keys: tuple[str, ...] = ("resolver-tests",)) -> None:
        self.store = CountingStore()
        self.crypto = CountingKeyring(*keys)
        self.service = Service(self.store, self.crypto, egress=LOOPBACK)
        self.resolver = Resolver(self.store, self.service, ttl=ttl)

    async def connection(self, slug: str, **more: Any) -> None:
        body = {"slug": slug, "name": slug, "upstreamUrl": "http://127.0.0.1:9/mcp"}
        await self.service.create_connection({**body, "credential": CREDENTIAL, **more})


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    s = Setup()
    await s.store.open()
    s.resolver.attach()
    yield s
    await s.resolver.aclose()
    await s.store.close()


async def test_warm_resolution_reads_no_store_and_unwraps_no_key(setup: Setup) -> None:
    """Once warm, 100 key and connection resolutions make zero store reads and zero unwraps."""
    await setup.connection("conn-a")
    _, token = await setup.service.create_api_key({"name": "m", "scopes": ["mcp"]})
    await setup.resolver.authenticate(token)
    await setup.resolver.connection("conn-a")
    reads, unwraps = setup.store.reads, setup.crypto.unwraps
    for _ in range(100):
        key = await setup.resolver.authenticate(token)
        found = await setup.resolver.connection("conn-a")
        assert key.name == "m"
        assert isinstance(found, _Resolved)
        assert found.target is not None
    assert setup.store.reads == reads
    assert setup.crypto.unwraps == unwraps


async def test_resolved_target_injects_the_credential_and_hides_it(setup: Setup) -> None:
    """The resolved target carries the credential header; no repr shows it."""
    await setup.connection("conn-a")
    found = await setup.resolver.connection("conn-a")
    assert isinstance(found, _Resolved)
    assert found.target is not None
    assert found.target.inject == (("Authorization", f"Bearer {CREDENTIAL}"),)
    assert CREDENTIAL not in repr(found) + repr(setup.resolver.connections._entries)


async def test_malformed_token_is_refused_without_a_store_read(setup: Setup) -> None:
    """A token with a bad shape or checksum is 401 before any store read."""
    good = generate_key()
    for token in ("", "ig_short", good[:-1] + ("A" if good[-1] != "A" else "B"), "x" * 39):
        with pytest.raises(Unauthorized):
            await setup.resolver.authenticate(token)
    assert setup.store.reads == 0


async def test_unknown_key_is_cached_until_a_key_is_created(setup: Setup) -> None:
    """An unknown key is one store read, then cached; creating any key forgets negatives."""
    unknown = generate_key()
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await setup.resolver.authenticate(unknown)
    assert setup.store.reads == 1
    await setup.service.create_api_key({"name": "m", "scopes": ["mcp"]})
    with pytest.raises(Unauthorized):
        await setup.resolver.authenticate(unknown)
    assert setup.store.reads == 2


async def test_revoke_takes_effect_on_the_next_resolution(setup: Setup) -> None:
    """Revoking a cached key invalidates it at once (through the store's change notice)."""
    _, token = await setup.service.create_api_key({"name": "m", "scopes": ["mcp"]})
    key = await setup.resolver.authenticate(token)
    await setup.service.revoke_api_key(key.id)
    with pytest.raises(Unauthorized):
        await setup.resolver.authenticate(token)


async def test_connection_change_invalidates_only_that_connection(setup: Setup) -> None:
    """A rotate re-reads and re-unwraps that connection only; others stay cached."""
    await setup.connection("conn-a")
    await setup.connection("conn-b")
    await setup.resolver.connection("conn-a")
    await setup.resolver.connection("conn-b")
    reads, unwraps = setup.store.reads, setup.crypto.unwraps
    await setup.service.rotate_credential("conn-a", "rotated-token")
    setup.store.reads, setup.crypto.unwraps = reads, unwraps  # the rotate's own work
    found = await setup.resolver.connection("conn-a")
    await setup.resolver.connection("conn-b")
    assert isinstance(found, _Resolved)
    assert found.target is not None
    assert found.target.inject == (("Authorization", "Bearer rotated-token"),)
    assert (setup.store.reads - reads, setup.crypto.unwraps - unwraps) == (1, 1)


async def test_missing_connection_is_cached_until_created(setup: Setup) -> None:
    """An unknown slug is cached as MISSING; creating it makes it resolvable at once."""
    assert await setup.resolver.connection("conn-new") is MISSING
    assert await setup.resolver.connection("conn-new") is MISSING
    assert setup.store.reads == 1
    await setup.connection("conn-new")
    assert isinstance(await setup.resolver.connection("conn-new"), _Resolved)


async def test_change_all_forgets_every_entry(setup: Setup) -> None:
    """A Change("all") (e.g. a notification channel reconnected) empties both caches."""
    await setup.connection("conn-a")
    _, token = await setup.service.create_api_key({"name": "m", "scopes": ["mcp"]})
    await setup.resolver.authenticate(token)
    await setup.resolver.connection("conn-a")
    reads = setup.store.reads
    setup.resolver.on_change(Change("all"))
    await setup.resolver.authenticate(token)
    await setup.resolver.connection("conn-a")
    assert setup.store.reads == reads + 2


async def test_revalidating_an_unchanged_connection_unwraps_no_key() -> None:
    """Past the TTL an entry is re-read in the background; unchanged, it is not re-unwrapped."""
    s = Setup(ttl=0.05)
    await s.store.open()
    try:
        await s.connection("conn-a")
        first = await s.resolver.connection("conn-a")
        unwraps, reads = s.crypto.unwraps, s.store.reads
        await asyncio.sleep(0.1)
        assert await s.resolver.connection("conn-a") is first  # stale, served at once
        await asyncio.sleep(0.05)
        assert s.store.reads == reads + 1
        assert s.crypto.unwraps == unwraps
        assert await s.resolver.connection("conn-a") is first
    finally:
        await s.resolver.aclose()
        await s.store.close()


async def test_undecryptable_credential_resolves_to_no_target_and_logs_the_key_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A credential sealed under a missing master key: no target, a 503 error, the key id
    logged once per fill, and no key material or credential in the log."""
    s = Setup(keys=("gateway-key",))
    await s.store.open()
    s.resolver.attach()
    try:
        elsewhere = FixedKeyring("elsewhere")
        await Service(s.store, elsewhere, egress=LOOPBACK).create_connection(
            {
                "slug": "conn-a",
                "name": "A",
                "upstreamUrl": "http://127.0.0.1:9",
                "credential": CREDENTIAL,
            }
        )
        caplog.set_level(logging.DEBUG)
        found = await s.resolver.connection("conn-a")
        assert isinstance(found, _Resolved)
        assert found.target is None
        assert found.fault is not None
        assert elsewhere.primary_key_id in found.fault
        err = found.unusable()
        assert isinstance(err, CryptoUnavailable)
        assert (err.status, err.code) == (503, "crypto_unavailable")
        assert err.retry_after is not None
        assert err.retry_after > 0
        await s.resolver.connection("conn-a")
        logged = [r for r in caplog.records if elsewhere.primary_key_id in r.getMessage()]
        assert len(logged) == 1
        for name in ("elsewhere", "gateway-key"):
            raw = FixedKeyring.key_for(name)
            for shown in (raw.hex(), base64.b64encode(raw).decode(), repr(raw)):
                assert shown not in caplog.text
        assert CREDENTIAL not in caplog.text + repr(found)
    finally:
        await s.resolver.aclose()
        await s.store.close()


def test_ttl_must_be_positive() -> None:
    """A zero or negative TTL is refused when the resolver is built."""
    s = Setup()
    with pytest.raises(ValueError, match="cache_ttl"):
        Resolver(s.store, s.service, ttl=0)
