"""End to end: the Service on a Vault KV store, Transit crypto and a separate audit sink."""

from __future__ import annotations

from pathlib import Path

from igris_mw_vault import TransitProvider, VaultKVStore, rewrap_all
from igris_mw_vault.testing import BaoDevServer

from igris_mw._audit.jsonl import JsonlAuditSink
from igris_mw._service import Service
from igris_mw.crypto import binding


async def test_service_on_vault_with_jsonl_audit(
    bao: BaoDevServer, store_url: str, transit_key: str, tmp_path: Path
) -> None:
    """Create, rotate, read, rewrap after a key rotation; audit goes to the JSONL sink, intact."""
    env = {"VAULT_TOKEN": bao.root_token}
    store = VaultKVStore.from_url(store_url, env)
    crypto = TransitProvider.from_url(
        f"vault-transit://{bao.hostport}/transit/{transit_key}?tls=false", env
    )
    sink = JsonlAuditSink(tmp_path / "audit.jsonl")
    await store.open()
    await sink.open()
    service = Service(store, crypto, audit=sink)
    try:
        created = await service.create_connection(
            {
                "slug": "gh-prod",
                "name": "GitHub",
                "upstreamUrl": "https://mcp.example/gh",
                "credential": "ghp_first-secret",
            }
        )
        rotated = await service.rotate_credential("gh-prod", "ghp_second-secret")
        assert rotated.credential_version == created.credential_version + 1
        secret = await service.open_credential(await service.get_connection("gh-prod"))
        assert secret is not None
        assert secret.reveal() == b"ghp_second-secret"

        await crypto.rotate()
        assert await rewrap_all(service) == 1
        after = await service.get_connection("gh-prod")
        assert after.ciphertext is not None
        assert crypto.key_id_of(after.ciphertext) == f"{transit_key}:v2"
        again = await service.open_credential(after)
        assert again is not None
        assert again.reveal() == b"ghp_second-secret"
        ad = binding(
            after.slug, after.credential_version, after.upstream_url, after.auth_type.value
        )
        assert await crypto.decrypt(after.ciphertext, ad) == b"ghp_second-secret"

        audit = await service.list_audit("gh-prod")
        assert [e.action for e in audit.items] == ["rotate", "create"]
        assert await service.verify_audit() == {"gh-prod": []}
        text = (tmp_path / "audit.jsonl").read_text()
        assert "ghp_" not in text
        assert bao.root_token not in text
    finally:
        await crypto.aclose()
        await store.close()
        await sink.close()
