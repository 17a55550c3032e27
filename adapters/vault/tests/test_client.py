"""Vault sessions: token upkeep, namespaces and faults (sealed, unreachable, hung)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from igris_mw_vault import TransitProvider, VaultKVStore
from igris_mw_vault._client import VaultClient
from igris_mw_vault._config import Credentials, Endpoint
from igris_mw_vault.testing import BaoDevServer

from igris_mw.errors import CryptoUnavailable, StoreUnavailable
from igris_mw.testing.storage_suite import make_connection

POLICY = """
path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }
path "transit/*" { capabilities = ["create", "read", "update"] }
"""


@pytest.fixture
def policy(bao: BaoDevServer) -> str:
    """An ACL policy for the store and Transit paths."""
    bao.put_policy("igris-test", POLICY)
    return "igris-test"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


async def test_unreachable_is_503_with_retry_after() -> None:
    """Nothing listening: StoreUnavailable vault_unreachable with retry_after, at once."""
    store = VaultKVStore.from_url(
        f"vault://127.0.0.1:{_closed_port()}/secret?tls=false", {"VAULT_TOKEN": "t"}
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    await store.close()
    assert time.monotonic() - started < 5
    assert info.value.status == 503
    assert info.value.code == "vault_unreachable"
    assert info.value.retry_after == 5


async def test_hung_vault_times_out(silent_server: int) -> None:
    """A Vault that accepts but never answers raises vault_unreachable within the read timeout."""
    client = VaultClient(
        Endpoint("127.0.0.1", silent_server, tls=False),
        Credentials(token="t"),
        unavailable=CryptoUnavailable,
        where="test",
        timeout=httpx.Timeout(0.5),
    )
    started = time.monotonic()
    with pytest.raises(CryptoUnavailable) as info:
        await client.request("GET", "sys/health")
    await client.aclose()
    assert time.monotonic() - started < 3
    assert info.value.code == "vault_unreachable"
    assert "in time" in info.value.message


async def test_namespace_and_token_headers() -> None:
    """Every request carries X-Vault-Namespace when set, and the token only in X-Vault-Token."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("lookup-self"):
            return httpx.Response(200, json={"data": {"ttl": 0, "renewable": False}})
        return httpx.Response(200, json={"data": {"ok": True}})

    client = VaultClient(
        Endpoint("vault.test", 8200, tls=True, namespace="team-a"),
        Credentials(token="tok-123"),
        unavailable=StoreUnavailable,
        where="vault://vault.test:8200/secret",
        transport=httpx.MockTransport(handler),
    )
    await client.request("GET", "secret/data/x")
    await client.aclose()
    assert [r.url.path for r in seen] == ["/v1/auth/token/lookup-self", "/v1/secret/data/x"]
    for request in seen:
        assert request.url.scheme == "https"
        assert request.headers["X-Vault-Namespace"] == "team-a"
        assert request.headers["X-Vault-Token"] == "tok-123"
        assert "tok-123" not in str(request.url)


async def test_sealed_then_unsealed_resumes(
    bao: BaoDevServer, store_url: str, transit_key: str, vault_env: dict[str, str]
) -> None:
    """Sealed: vault_sealed 503 with retry_after for store and Transit; after unseal both work."""
    store = VaultKVStore.from_url(store_url, vault_env)
    transit = TransitProvider.from_url(
        f"vault-transit://{bao.hostport}/transit/{transit_key}?tls=false", vault_env
    )
    await store.open()
    envelope = await transit.encrypt(b"cred", b"ad")
    await store.create_connection(make_connection("before-seal"))
    bao.seal()
    try:
        with pytest.raises(StoreUnavailable) as store_info:
            await store.get_connection("before-seal")
        with pytest.raises(CryptoUnavailable) as crypto_info:
            await transit.decrypt(envelope, b"ad")
    finally:
        bao.unseal()
    for info in (store_info, crypto_info):
        assert info.value.status == 503
        assert info.value.code == "vault_sealed"
        assert info.value.retry_after == 5
    assert (await store.get_connection("before-seal")).slug == "before-seal"
    assert await transit.decrypt(envelope, b"ad") == b"cred"
    await store.close()
    await transit.aclose()


async def test_approle_login_and_renewal(bao: BaoDevServer, store_url: str, policy: str) -> None:
    """AppRole logs in once and renews its 2-second token, so requests keep working past its TTL."""
    role_id, secret_id = bao.approle(
        f"r{uuid.uuid4().hex[:8]}", policies=[policy], token_ttl="2s", token_max_ttl="60s"
    )
    store = VaultKVStore.from_url(
        store_url, {"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    )
    await store.open()
    try:
        await store.create_connection(make_connection("renewed"))
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            assert (await store.get_connection("renewed")).slug == "renewed"
            await asyncio.sleep(0.3)
        client = store._client
        assert client.logins == 1
        assert client.renewals >= 1
        for secret in (role_id, secret_id):
            assert secret not in repr(store) + repr(client)
    finally:
        await store.close()


async def test_approle_logs_in_again_at_max_ttl(
    bao: BaoDevServer, store_url: str, policy: str
) -> None:
    """When the token reaches its max TTL and cannot be renewed, a fresh AppRole login follows."""
    role_id, secret_id = bao.approle(
        f"r{uuid.uuid4().hex[:8]}", policies=[policy], token_ttl="2s", token_max_ttl="3s"
    )
    store = VaultKVStore.from_url(
        store_url, {"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    )
    await store.open()
    try:
        await store.create_connection(make_connection("relogin"))
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            assert (await store.get_connection("relogin")).slug == "relogin"
            await asyncio.sleep(0.3)
        assert store._client.logins >= 2
    finally:
        await store.close()


async def test_idle_token_renewed_in_background(
    bao: BaoDevServer, store_url: str, policy: str
) -> None:
    """A renewable 2-second token outlives its TTL while idle: the background task renews it."""
    token = bao.create_token(policies=[policy], ttl="2s")
    store = VaultKVStore.from_url(store_url, {"VAULT_TOKEN": token})
    await store.open()
    try:
        await asyncio.sleep(3.0)
        assert store._client.renewals >= 1
        created = await store.create_connection(make_connection("idle-ok"))
        assert created.version == 1
    finally:
        await store.close()


async def test_expired_token_is_a_clear_error(
    bao: BaoDevServer, store_url: str, policy: str
) -> None:
    """A non-renewable token past its TTL: vault_auth_failed naming VAULT_TOKEN, never the token."""
    token = bao.create_token(policies=[policy], ttl="1s", renewable=False)
    store = VaultKVStore.from_url(store_url, {"VAULT_TOKEN": token})
    await store.open()
    await asyncio.sleep(1.5)
    with pytest.raises(StoreUnavailable) as info:
        await store.get_connection("any-slug")
    await store.close()
    assert info.value.code == "vault_auth_failed"
    assert "expired or revoked" in info.value.message
    assert token not in str(info.value) + repr(info.value)


async def test_revoked_token_is_a_clear_error(
    bao: BaoDevServer, store_url: str, policy: str
) -> None:
    """A token revoked while in use: vault_auth_failed on the next request."""
    token = bao.create_token(policies=[policy], ttl="1h")
    store = VaultKVStore.from_url(store_url, {"VAULT_TOKEN": token})
    await store.open()
    await store.create_connection(make_connection("pre-revoke"))
    bao.api("POST", "auth/token/revoke", {"token": token})
    with pytest.raises(StoreUnavailable) as info:
        await store.get_connection("pre-revoke")
    await store.close()
    assert info.value.code == "vault_auth_failed"
    assert token not in str(info.value)


async def test_policy_without_access_is_permission_denied(
    bao: BaoDevServer, store_url: str
) -> None:
    """A valid token whose policies lack the path: vault_permission_denied naming it."""
    token = bao.create_token(policies=["default"], ttl="1h")
    store = VaultKVStore.from_url(store_url, {"VAULT_TOKEN": token})
    with pytest.raises(StoreUnavailable) as info:
        await store.get_connection("nope-slug")
    await store.close()
    assert info.value.code == "vault_permission_denied"
    assert "connections/nope-slug" in info.value.message
