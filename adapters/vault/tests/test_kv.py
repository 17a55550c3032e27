"""The KV v2 store: the shared conformance suite and its Vault-specific behaviour."""

from __future__ import annotations

import uuid

import pytest
from igris_mw_vault import VaultKVStore
from igris_mw_vault.testing import BaoDevServer

from igris_mw.errors import ConfigurationError, StoreUnavailable
from igris_mw.plugins import store_from_url
from igris_mw.storage import Store
from igris_mw.testing.storage_suite import (
    StoreSuite,
    make_connection,
    make_event,
    make_state_machine,
)

_server: list[BaoDevServer] = []


@pytest.fixture(autouse=True)
def _remember_server(bao: BaoDevServer) -> None:
    # The state machine is a unittest case: it reaches the server through here.
    _server[:] = [bao]


def _fresh_url(bao: BaoDevServer) -> str:
    return f"vault://{bao.hostport}/secret/t{uuid.uuid4().hex[:12]}?tls=false"


class TestVaultKVStore(StoreSuite):
    """The storage conformance suite on a fresh prefix of the dev server's KV v2 mount."""

    async def make_store(self) -> Store:
        bao: BaoDevServer = self.request.getfixturevalue("bao")
        store = VaultKVStore.from_url(_fresh_url(bao), {"VAULT_TOKEN": bao.root_token})
        await store.open()
        return store

    async def make_peer(self, store: Store) -> Store:
        assert isinstance(store, VaultKVStore)
        bao: BaoDevServer = self.request.getfixturevalue("bao")
        url = f"vault://{bao.hostport}/{store.mount}/{store.prefix}?tls=false"
        peer = VaultKVStore.from_url(url, {"VAULT_TOKEN": bao.root_token})
        await peer.open()
        return peer


async def _machine_store() -> Store:
    bao = _server[0]
    store = VaultKVStore.from_url(_fresh_url(bao), {"VAULT_TOKEN": bao.root_token})
    await store.open()
    return store


TestVaultKVStoreModel = make_state_machine(_machine_store, max_examples=8, stateful_step_count=15)


def test_entry_points_build_the_store(bao: BaoDevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """vault:// and openbao:// URLs load VaultKVStore through the igris_mw.stores entry points."""
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    for scheme in ("vault", "openbao"):
        store = store_from_url(f"{scheme}://{bao.hostport}/secret?tls=false")
        assert isinstance(store, VaultKVStore)
        assert store.mount == "secret"


async def test_kv_v1_mount_refused(bao: BaoDevServer, vault_env: dict[str, str]) -> None:
    """open() on a KV version 1 mount raises a one-line error naming the mount and KV v2."""
    bao.enable_kv("kvone", 1)
    store = VaultKVStore.from_url(f"vault://{bao.hostport}/kvone?tls=false", vault_env)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    await store.close()
    assert info.value.code == "vault_mount_invalid"
    assert "'kvone'" in info.value.message
    assert "KV version 1" in info.value.message
    assert "\n" not in info.value.message


async def test_non_kv_mount_refused(bao: BaoDevServer, vault_env: dict[str, str]) -> None:
    """open() on a mount of another engine (transit) says it is not KV v2."""
    store = VaultKVStore.from_url(f"vault://{bao.hostport}/transit?tls=false", vault_env)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    await store.close()
    assert info.value.code == "vault_mount_invalid"
    assert "'transit'" in info.value.message
    assert "not KV version 2" in info.value.message


async def test_missing_mount_refused(bao: BaoDevServer, vault_env: dict[str, str]) -> None:
    """open() on a mount that does not exist names it."""
    store = VaultKVStore.from_url(f"vault://{bao.hostport}/nosuchmount?tls=false", vault_env)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    await store.close()
    assert info.value.code == "vault_mount_invalid"
    assert "no KV v2 mount 'nosuchmount'" in info.value.message


async def test_audit_methods_point_at_the_sink(store_url: str, vault_env: dict[str, str]) -> None:
    """The store declares audit=False and its audit methods say where audit events go."""
    store = VaultKVStore.from_url(store_url, vault_env)
    await store.open()
    try:
        assert store.capabilities.audit is False
        assert store.capabilities.shared is True
        with pytest.raises(ConfigurationError, match="--audit"):
            await store.append_audit_events([make_event("abc")])
        with pytest.raises(ConfigurationError, match="audit sink"):
            await store.list_audit_events("abc")
    finally:
        await store.close()


async def test_layout_and_base64_ciphertext(
    bao: BaoDevServer, store_url: str, vault_env: dict[str, str]
) -> None:
    """A connection is one secret at <prefix>/connections/<slug>: base64 ciphertext, KV version."""
    store = VaultKVStore.from_url(store_url, vault_env)
    await store.open()
    try:
        created = await store.create_connection(
            make_connection("laid-out", ciphertext=b"\x00\xffbin")
        )
        raw = bao.api("GET", f"secret/data/{store.prefix}/connections/laid-out")
        assert raw["data"]["data"]["ciphertext"] == "AP9iaW4="
        assert raw["data"]["metadata"]["version"] == created.version == 1
        updated = await store.update_connection(
            make_connection("laid-out", name="renamed"), expected_version=1
        )
        raw = bao.api("GET", f"secret/data/{store.prefix}/connections/laid-out")
        assert raw["data"]["metadata"]["version"] == updated.version == 2
    finally:
        await store.close()


async def test_repr_and_errors_hide_the_token(bao: BaoDevServer, store_url: str) -> None:
    """The token appears in no repr and in no error message, including for a refused token."""
    good = VaultKVStore.from_url(store_url, {"VAULT_TOKEN": bao.root_token})
    assert bao.root_token not in repr(good)
    bogus = "hvs.not-a-real-token-" + uuid.uuid4().hex
    bad = VaultKVStore.from_url(store_url, {"VAULT_TOKEN": bogus})
    with pytest.raises(StoreUnavailable) as info:
        await bad.open()
    await bad.close()
    assert info.value.code == "vault_auth_failed"
    text = str(info.value) + repr(info.value) + repr(bad)
    assert bogus not in text
    assert "VAULT_TOKEN" in info.value.message
