"""The Transit crypto provider: the shared crypto suite and its Vault-specific behaviour."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
from igris_mw_vault import TransitProvider
from igris_mw_vault.testing import BaoDevServer

from igris_mw.crypto import CryptoProvider
from igris_mw.errors import CryptoUnavailable, InvalidCiphertext, UnknownKeyId
from igris_mw.plugins import crypto_from_url
from igris_mw.testing.crypto_suite import CryptoProviderSuite


class TestTransitProvider(CryptoProviderSuite):
    """The crypto conformance suite on a fresh derived Transit key per test."""

    max_examples = 10
    max_plaintext_size = 16 * 1024
    distinct_count = 40

    @pytest.fixture(autouse=True)
    def _server(self, bao: BaoDevServer) -> None:
        self.bao = bao

    def _provider(self, key: str) -> TransitProvider:
        self.bao.create_transit_key(key)
        url = f"vault-transit://{self.bao.hostport}/transit/{key}?tls=false"
        return TransitProvider.from_url(url, {"VAULT_TOKEN": self.bao.root_token})

    async def make_provider(self) -> CryptoProvider:
        return self._provider(f"k{uuid.uuid4().hex[:12]}")

    async def make_foreign_provider(self) -> CryptoProvider:
        return self._provider(f"f{uuid.uuid4().hex[:12]}")

    async def rotate(self, provider: CryptoProvider) -> CryptoProvider:
        assert isinstance(provider, TransitProvider)
        await provider.rotate()
        return provider

    def key_material(self) -> Sequence[bytes | str]:
        return [self.bao.root_token]


def _url(bao: BaoDevServer, key: str) -> str:
    return f"vault-transit://{bao.hostport}/transit/{key}?tls=false"


async def test_entry_point_builds_the_provider(bao: BaoDevServer, transit_key: str) -> None:
    """crypto_from_url('vault-transit://...') loads TransitProvider, which round-trips."""
    provider = crypto_from_url(_url(bao, transit_key), {"VAULT_TOKEN": bao.root_token})
    assert isinstance(provider, TransitProvider)
    try:
        envelope = await provider.encrypt(b"tok", b"binding")
        assert provider.key_id_of(envelope) == f"{transit_key}:v1"
        assert await provider.decrypt(envelope, b"binding") == b"tok"
    finally:
        await provider.aclose()


async def test_missing_key_is_a_one_line_error(
    bao: BaoDevServer, vault_env: dict[str, str]
) -> None:
    """A missing Transit key: CryptoUnavailable naming key and mount; it is not auto-created."""
    provider = TransitProvider.from_url(_url(bao, "absent-key"), vault_env)
    try:
        with pytest.raises(CryptoUnavailable) as info:
            await provider.encrypt(b"x", b"ad")
        assert info.value.code == "vault_transit_key_invalid"
        assert "'absent-key'" in info.value.message
        assert "'transit'" in info.value.message
        assert "\n" not in info.value.message
        with pytest.raises(RuntimeError, match="404"):
            bao.api("GET", "transit/keys/absent-key")
    finally:
        await provider.aclose()


async def test_non_derived_key_refused(bao: BaoDevServer, vault_env: dict[str, str]) -> None:
    """A key created without derived=true is refused: it could not bind envelopes to records."""
    bao.create_transit_key("plain-key", derived=False)
    provider = TransitProvider.from_url(_url(bao, "plain-key"), vault_env)
    try:
        with pytest.raises(CryptoUnavailable, match="not derived"):
            await provider.open()
    finally:
        await provider.aclose()


async def test_long_binding_uses_a_digest_context(
    bao: BaoDevServer, transit_key: str, vault_env: dict[str, str]
) -> None:
    """A binding longer than 1 KiB still round-trips and still must match exactly."""
    provider = TransitProvider.from_url(_url(bao, transit_key), vault_env)
    try:
        ad = b"u" * 5000
        envelope = await provider.encrypt(b"secret", ad)
        assert await provider.decrypt(envelope, ad) == b"secret"
        with pytest.raises(InvalidCiphertext):
            await provider.decrypt(envelope, ad[:-1] + b"v")
    finally:
        await provider.aclose()


async def test_envelope_carries_transit_ciphertext(
    bao: BaoDevServer, transit_key: str, vault_env: dict[str, str]
) -> None:
    """The envelope is Vault's own ciphertext: Transit decrypts its vault:vN: form directly."""
    import base64

    from igris_mw_vault._transit import _context, _parse

    provider = TransitProvider.from_url(_url(bao, transit_key), vault_env)
    try:
        envelope = await provider.encrypt(b"direct", b"ad")
        parsed = _parse(envelope)
        assert parsed is not None
        name, version, raw = parsed
        text = f"vault:v{version}:{base64.b64encode(raw).decode()}"
        body = {"ciphertext": text, "context": _context(b"ad")}
        out = bao.api("POST", f"transit/decrypt/{name}", body)
        assert base64.b64decode(out["data"]["plaintext"]) == b"direct"
    finally:
        await provider.aclose()


async def test_audit_key_of_a_missing_version_is_unknown(
    bao: BaoDevServer, transit_key: str
) -> None:
    """An audit key id naming a Transit key version that does not exist is UnknownKeyId."""
    provider = TransitProvider.from_url(_url(bao, transit_key), {"VAULT_TOKEN": bao.root_token})
    try:
        key = await provider.audit_key()
        assert key.key_id == f"transit:{transit_key}:v1"
        with pytest.raises(UnknownKeyId):
            await provider.audit_key(f"transit:{transit_key}:v99")
    finally:
        await provider.aclose()
