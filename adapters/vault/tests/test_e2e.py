"""End to end: igris-mw's commands on a Vault KV store, Transit crypto and a separate audit sink.

Only public names: the commands (``igris_mw.cli.main``), the adapter's classes
and ``igris_mw.crypto.binding``, as a user of both distributions has them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from igris_mw_vault import TransitProvider, VaultKVStore
from igris_mw_vault.testing import BaoDevServer

from igris_mw.cli import main
from igris_mw.crypto import binding


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run one ``igris-mw`` command that must succeed; its JSON output."""
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


async def _rotate_transit_key(crypto_url: str, env: dict[str, str]) -> None:
    crypto = TransitProvider.from_url(crypto_url, env)
    try:
        await crypto.rotate()
    finally:
        await crypto.aclose()


async def _stored_envelope(
    store_url: str, crypto_url: str, env: dict[str, str]
) -> tuple[str | None, bytes]:
    """The stored envelope's key id and what it decrypts to under its record's binding."""
    store = VaultKVStore.from_url(store_url, env)
    crypto = TransitProvider.from_url(crypto_url, env)
    await store.open()
    try:
        conn = await store.get_connection("gh-prod")
        assert conn.ciphertext is not None
        ad = binding(conn.slug, conn.credential_version, conn.upstream_url, conn.auth_type.value)
        return crypto.key_id_of(conn.ciphertext), await crypto.decrypt(conn.ciphertext, ad)
    finally:
        await crypto.aclose()
        await store.close()


def test_commands_on_vault_with_jsonl_audit(
    bao: BaoDevServer,
    store_url: str,
    transit_key: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Create, rotate, rewrap after a key rotation; audit goes to the JSONL sink, intact."""
    env = {"VAULT_TOKEN": bao.root_token}
    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    crypto_url = f"vault-transit://{bao.hostport}/transit/{transit_key}?tls=false"
    audit_file = tmp_path / "audit.jsonl"
    where = ["--store", store_url, "--crypto", crypto_url, "--audit", f"jsonl://{audit_file}"]
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("ghp_first-secret")
    second.write_text("ghp_second-secret")

    created = _run(
        capsys, "connections", "create", "--slug", "gh-prod", "--name", "GitHub",
        "--upstream-url", "https://mcp.example/gh", "--credential-file", str(first), *where,
    )  # fmt: skip
    rotated = _run(
        capsys, "connections", "rotate", "gh-prod", "--credential-file", str(second), *where
    )
    assert rotated["credentialVersion"] == created["credentialVersion"] + 1
    assert asyncio.run(_stored_envelope(store_url, crypto_url, env)) == (
        f"{transit_key}:v1",
        b"ghp_second-secret",
    )

    asyncio.run(_rotate_transit_key(crypto_url, env))
    rewrap = _run(capsys, "crypto", "rewrap", *where)
    assert rewrap == {"rewrapped": 1, "primaryKeyId": f"{transit_key}:v2"}
    assert asyncio.run(_stored_envelope(store_url, crypto_url, env)) == (
        f"{transit_key}:v2",
        b"ghp_second-secret",
    )

    audit = _run(capsys, "audit", "gh-prod", *where)
    assert [e["action"] for e in audit["data"]] == ["rotate", "create"]
    assert _run(capsys, "audit", "verify", *where) == {"ok": True, "connections": {"gh-prod": []}}
    text = audit_file.read_text()
    assert "ghp_" not in text
    assert bao.root_token not in text

    # Keyed under Transit: the events before the key rotation name v1, after it v2.
    _run(capsys, "connections", "disable", "gh-prod", *where)
    events = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [e["keyId"] for e in events] == [
        f"transit:{transit_key}:v1", f"transit:{transit_key}:v1", f"transit:{transit_key}:v2",
    ]  # fmt: skip
    assert _run(capsys, "audit", "verify", *where)["ok"] is True
    # The last event cut from the file: its signed head (audit.jsonl.heads) gives it away.
    audit_file.write_text("".join(json.dumps(e) + "\n" for e in events[:-1]))
    capsys.readouterr()
    assert main(["audit", "verify", *where]) == 1
    assert "the last 1 event(s) of chain 'gh-prod' were removed" in capsys.readouterr().out
