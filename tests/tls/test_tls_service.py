"""The service side of a connection's TLS material: sealing, binding, re-sealing, rotation."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trustme

from igris_mw._errors import InvalidCiphertext, ValidationError
from igris_mw._rewrap import rewrap_all
from igris_mw._service import Service
from igris_mw.models import AuthType
from igris_mw.testing import FixedKeyring, MemoryStore


def identity(leaf: trustme.LeafCert) -> dict[str, str]:
    return {
        "clientCertificate": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
        "clientKey": leaf.private_key_pem.bytes().decode(),
    }


@pytest.fixture
def svc() -> Service:
    return Service(MemoryStore(), FixedKeyring())


def body(**over: Any) -> dict[str, Any]:
    return {
        "slug": "internal",
        "name": "Internal MCP",
        "upstreamUrl": "https://mcp.internal.test/mcp",
        "authType": "bearer",
        "credential": "tok-123",
        **over,
    }


async def test_client_key_is_sealed_and_opens_under_its_binding(
    svc: Service, client_identity: trustme.LeafCert
) -> None:
    """The stored record holds the key only as an envelope; it opens to the PEM."""
    conn = await svc.create_connection(body(**identity(client_identity)))
    assert conn.tls is not None
    sealed = conn.tls.client_key_ciphertext
    assert sealed is not None
    assert b"PRIVATE KEY" not in sealed
    key = await svc.open_client_key(conn)
    assert key is not None
    assert key.reveal() == client_identity.private_key_pem.bytes()
    assert "clientKey" not in conn.to_json()


async def test_key_and_credential_envelopes_cannot_be_swapped(
    svc: Service, client_identity: trustme.LeafCert
) -> None:
    """The key's envelope in the credential's place (or back) does not open."""
    conn = await svc.create_connection(body(**identity(client_identity)))
    assert conn.tls is not None
    assert conn.ciphertext is not None
    swapped = attrs.evolve(
        conn,
        ciphertext=conn.tls.client_key_ciphertext,
        tls=attrs.evolve(conn.tls, client_key_ciphertext=conn.ciphertext),
    )
    with pytest.raises(InvalidCiphertext):
        await svc.open_credential(swapped)
    with pytest.raises(InvalidCiphertext):
        await svc.open_client_key(swapped)


async def test_patch_of_the_binding_reseals_the_key(
    svc: Service, client_identity: trustme.LeafCert
) -> None:
    """Changing upstreamUrl or authType moves the key's envelope to the new binding."""
    before = await svc.create_connection(body(**identity(client_identity)))
    moved = await svc.update_connection(
        "internal", {"upstreamUrl": "https://mcp2.internal.test/mcp", "authType": "none"}
    )
    assert moved.auth_type is AuthType.NONE
    key = await svc.open_client_key(moved)
    assert key is not None
    assert key.reveal() == client_identity.private_key_pem.bytes()
    stale = attrs.evolve(moved, tls=before.tls)
    with pytest.raises(InvalidCiphertext):
        await svc.open_client_key(stale)


async def test_patch_sets_and_removes_ca_and_removes_identity(
    svc: Service, tls_ca: trustme.CA, client_identity: trustme.LeafCert
) -> None:
    """PATCH caCertificate sets/removes it; clientCertificate null removes cert and key."""
    await svc.create_connection(body(**identity(client_identity)))
    ca = tls_ca.cert_pem.bytes().decode()
    with_ca = await svc.update_connection("internal", {"caCertificate": ca})
    assert with_ca.to_json()["caCertificate"] == ca
    bare = await svc.update_connection("internal", {"clientCertificate": None})
    assert bare.tls is not None
    assert bare.tls.client_certificate is None
    assert bare.tls.client_key_ciphertext is None
    assert bare.tls.ca_certificate == ca
    gone = await svc.update_connection("internal", {"caCertificate": None})
    assert gone.tls is None


async def test_patch_cannot_set_a_client_certificate_or_key(
    svc: Service, client_identity: trustme.LeafCert
) -> None:
    """A new certificate or key goes through rotate; PATCH refuses both (422, state unchanged)."""
    created = await svc.create_connection(body())
    for field, value in identity(client_identity).items():
        with pytest.raises(ValidationError) as caught:
            await svc.update_connection("internal", {field: value})
        assert caught.value.field == field
    assert await svc.get_connection("internal") == created


async def test_rotate_only_the_client_identity_keeps_the_credential(
    svc: Service, tls_ca: trustme.CA, client_identity: trustme.LeafCert
) -> None:
    """rotate with just a new certificate and key: credentialVersion + 1, credential kept."""
    await svc.create_connection(body(**identity(client_identity)))
    fresh = tls_ca.issue_cert(common_name="next")
    rotated = await svc.rotate_credential(
        "internal",
        None,
        client_certificate=identity(fresh)["clientCertificate"],
        client_key=identity(fresh)["clientKey"],
    )
    assert rotated.credential_version == 2
    credential = await svc.open_credential(rotated)
    assert credential is not None
    assert credential.reveal() == b"tok-123"
    key = await svc.open_client_key(rotated)
    assert key is not None
    assert key.reveal() == fresh.private_key_pem.bytes()


async def test_rotate_a_renewed_certificate_alone_checks_the_stored_key(
    svc: Service, tls_ca: trustme.CA, client_identity: trustme.LeafCert
) -> None:
    """A certificate alone must match the stored key; a foreign one is 422 and changes nothing."""
    created = await svc.create_connection(
        body(authType="none", credential=None, **identity(client_identity))
    )
    other = tls_ca.issue_cert(common_name="other")
    with pytest.raises(ValidationError) as caught:
        await svc.rotate_credential(
            "internal", None, client_certificate=identity(other)["clientCertificate"]
        )
    assert caught.value.field == "clientKey"
    assert await svc.get_connection("internal") == created
    same = await svc.rotate_credential(
        "internal", None, client_certificate=identity(client_identity)["clientCertificate"]
    )
    assert same.credential_version == 2
    assert (await svc.open_client_key(same)) is not None


async def test_rotate_without_anything_is_422(svc: Service) -> None:
    """rotate needs a credential, or a client certificate / key."""
    await svc.create_connection(body())
    with pytest.raises(ValidationError) as caught:
        await svc.rotate_credential("internal", None)
    assert caught.value.field == "credential"


async def test_rewrap_moves_the_key_envelope_too(client_identity: trustme.LeafCert) -> None:
    """After a master-key rotation, rewrap moves the client key's envelope to the new key."""
    store = MemoryStore()
    old = Service(store, FixedKeyring("old"))
    await old.create_connection(body(**identity(client_identity)))
    new = Service(store, FixedKeyring("new", "old"))
    assert await rewrap_all(new) == 1
    conn = await store.get_connection("internal")
    only_new = Service(store, FixedKeyring("new"))
    key = await only_new.open_client_key(conn)
    assert key is not None
    assert key.reveal() == client_identity.private_key_pem.bytes()
    credential = await only_new.open_credential(conn)
    assert credential is not None
