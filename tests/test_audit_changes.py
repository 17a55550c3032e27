"""Management events' ``changes``: every field changed, from and to, nothing secret."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from igris_mw._service import Service
from igris_mw.testing import FixedKeyring, MemoryStore

SECRET = "canary-changes-credential"


def _ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_update_names_every_changed_field_and_fingerprints_certificates() -> None:
    """One PATCH of several fields: each appears with from/to; a CA by its SHA-256 only."""
    store = MemoryStore()
    svc = Service(store, FixedKeyring())
    await svc.create_connection(
        {"slug": "ghub", "name": "GitHub", "upstreamUrl": "https://mcp.example/mcp",
         "credential": SECRET}
    )  # fmt: skip
    ca = _ca_pem()
    await svc.update_connection(
        "ghub",
        {"name": "GitHub prod", "upstreamUrl": "https://other.example/mcp",
         "authType": "header", "headerName": "X-Token", "caCertificate": ca},
    )  # fmt: skip
    event = (await store.audit_chain("ghub"))[-1]
    assert event.action == "update"
    assert event.changes == {
        "name": {"from": "GitHub", "to": "GitHub prod"},
        "upstreamUrl": {"from": "https://mcp.example/mcp", "to": "https://other.example/mcp"},
        "authType": {"from": "bearer", "to": "header"},
        "headerName": {"from": None, "to": "X-Token"},
        "caCertificate": {"from": None, "to": "sha256:" + hashlib.sha256(ca.encode()).hexdigest()},
    }
    text = str(event.to_json())
    assert SECRET not in text
    assert "BEGIN CERTIFICATE" not in text


async def test_noop_update_and_repeated_disable_record_nothing() -> None:
    """A change that changes nothing writes no event."""
    store = MemoryStore()
    svc = Service(store, FixedKeyring())
    await svc.create_connection(
        {"slug": "ghub", "name": "GitHub", "upstreamUrl": "https://mcp.example/mcp",
         "credential": SECRET}
    )  # fmt: skip
    await svc.set_enabled("ghub", False)
    await svc.set_enabled("ghub", False)
    await svc.update_connection("ghub", {})
    assert [e.action for e in await store.audit_chain("ghub")] == ["create", "disable"]


async def test_api_key_patch_is_audited_on_the_global_chain() -> None:
    """PATCH of a key records from/to of each changed field, as the acting key, with no secret."""
    store = MemoryStore()
    svc = Service(store, FixedKeyring())
    await svc.create_connection(
        {"slug": "ghub", "name": "GitHub", "upstreamUrl": "https://mcp.example/mcp",
         "credential": SECRET}
    )  # fmt: skip
    record, key = await svc.create_api_key(
        {"name": "ci", "scopes": ["mcp"], "connections": ["ghub"]}
    )
    await svc.update_api_key(
        record.id,
        {"name": "ci-2", "rateLimit": {"requestsPerMinute": 60}, "maxConcurrent": 4},
        actor="key_admin",
    )
    event = (await store.audit_chain(None))[-1]
    assert (event.connection, event.action, event.api_key_id) == (None, "update", "key_admin")
    assert event.metadata == {"apiKey": record.id, "name": "ci"}
    assert event.changes is not None
    assert event.changes["name"] == {"from": "ci", "to": "ci-2"}
    assert event.changes["rateLimit"]["from"] is None
    assert event.changes["rateLimit"]["to"]["requestsPerMinute"] == 60
    assert event.changes["maxConcurrent"] == {"from": None, "to": 4}
    assert key not in str(event.to_json())
    # Deleting the connection takes it out of the key's grant: that change is recorded too.
    await svc.delete_connection("ghub", actor="key_admin")
    last = (await store.audit_chain(None))[-1]
    assert last.changes == {"connections": {"from": ["ghub"], "to": []}}
    assert (await svc.verify_audit()) == {"(global)": [], "ghub": []}


async def test_creation_records_what_was_created() -> None:
    """Create events carry each set field from null (the credential only as its version)."""
    store = MemoryStore()
    svc = Service(store, FixedKeyring())
    await svc.create_connection(
        {"slug": "ghub", "name": "GitHub", "upstreamUrl": "https://mcp.example/mcp",
         "credential": SECRET}
    )  # fmt: skip
    created = (await store.audit_chain("ghub"))[0]
    assert created.changes is not None
    assert created.changes["upstreamUrl"] == {"from": None, "to": "https://mcp.example/mcp"}
    assert created.changes["credentialVersion"] == {"from": None, "to": 1}
    assert created.changes["enabled"] == {"from": None, "to": True}
    _, key = await svc.create_api_key({"name": "ci", "scopes": ["mcp"]})
    event = (await store.audit_chain(None))[-1]
    assert event.changes is not None
    assert event.changes["scopes"] == {"from": None, "to": ["mcp"]}
    assert SECRET not in str(created.to_json())
    assert key not in str(event.to_json())
