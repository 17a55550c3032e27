"""Checking TLS material (CA certificates, client identities) and caching contexts."""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from igris_mw._errors import UpstreamError, ValidationError
from igris_mw._proxy import tls as _tls
from igris_mw._proxy.tls import ContextCache, TlsMaterial, build_context, tls_error_for
from igris_mw._tls_material import (
    MAX_CA_PEM,
    MAX_KEY_PEM,
    load_ca_file,
    validate_ca_certificate,
    validate_client_identity,
)
from igris_mw.models import Secret


def chain_pem(leaf: trustme.LeafCert) -> str:
    return "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)


def key_pem(leaf: trustme.LeafCert) -> str:
    return leaf.private_key_pem.bytes().decode()


def test_ca_certificate_round_trips(tls_ca: trustme.CA) -> None:
    """A CA certificate in PEM is accepted and returned unchanged."""
    pem = tls_ca.cert_pem.bytes().decode()
    assert validate_ca_certificate(pem) == pem


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n\x00\n-----END CERTIFICATE-----\n",
        "-----BEGIN CERTIFICATE-----\n\ud800\n-----END CERTIFICATE-----\n",
        "A" * (MAX_CA_PEM + 1),
        42,
        None,
    ],
)
def test_ca_certificate_that_does_not_parse_is_422(value: object) -> None:
    """A CA certificate that is not PEM (or too long, or not text) is a 422 naming the field."""
    with pytest.raises(ValidationError) as caught:
        validate_ca_certificate(value)
    assert caught.value.status == 422
    assert caught.value.field == "caCertificate"


@given(st.text(max_size=300))
def test_ca_certificate_never_fails_otherwise(value: str) -> None:
    """Whatever text follows a lone BEGIN line, the answer is a 422, never a crash."""
    with pytest.raises(ValidationError) as caught:
        validate_ca_certificate("-----BEGIN CERTIFICATE-----\n" + value)
    assert caught.value.field == "caCertificate"


def test_client_identity_is_accepted(client_identity: trustme.LeafCert) -> None:
    """A client chain and its matching key are accepted; the key comes back as a Secret."""
    chain, key = validate_client_identity(chain_pem(client_identity), key_pem(client_identity))
    assert chain == chain_pem(client_identity)
    assert isinstance(key, Secret)
    assert key.reveal().decode() == key_pem(client_identity)


def test_key_that_does_not_match_its_certificate_is_422(
    tls_ca: trustme.CA, client_identity: trustme.LeafCert
) -> None:
    """A key of another certificate is a 422 on clientKey that shows no key material."""
    other = tls_ca.issue_cert(common_name="someone-else")
    with pytest.raises(ValidationError) as caught:
        validate_client_identity(chain_pem(client_identity), key_pem(other))
    assert caught.value.field == "clientKey"
    assert "does not match" in caught.value.message
    assert "PRIVATE KEY" not in caught.value.message


def test_expired_client_certificate_is_refused(tls_ca: trustme.CA) -> None:
    """An expired client certificate is refused (422 on clientCertificate), not warned about."""
    now = datetime.now(UTC)
    expired = tls_ca.issue_cert(
        common_name="expired",
        not_before=now - timedelta(days=30),
        not_after=now - timedelta(days=1),
    )
    with pytest.raises(ValidationError) as caught:
        validate_client_identity(chain_pem(expired), key_pem(expired))
    assert caught.value.field == "clientCertificate"
    assert "expired" in caught.value.message


def test_encrypted_client_key_is_refused(client_identity: trustme.LeafCert) -> None:
    """A passphrase-protected key is refused with a hint (it is sealed at rest anyway)."""
    private = serialization.load_pem_private_key(client_identity.private_key_pem.bytes(), None)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode()
    with pytest.raises(ValidationError) as caught:
        validate_client_identity(chain_pem(client_identity), encrypted)
    assert caught.value.field == "clientKey"
    assert "encrypted" in caught.value.message


@pytest.mark.parametrize(
    "key",
    [
        "",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "-----BEGIN PRIVATE KEY-----\x00-----END PRIVATE KEY-----",
        "x" * (MAX_KEY_PEM + 1),
        b"-----BEGIN PRIVATE KEY-----",
    ],
)
def test_client_key_that_does_not_parse_is_422(
    client_identity: trustme.LeafCert, key: object
) -> None:
    """A key that is not a PEM private key is a 422 on clientKey."""
    with pytest.raises(ValidationError) as caught:
        validate_client_identity(chain_pem(client_identity), key)
    assert caught.value.field == "clientKey"


def test_client_certificate_that_does_not_parse_is_422(client_identity: trustme.LeafCert) -> None:
    """A client certificate that is not PEM is a 422 on clientCertificate."""
    with pytest.raises(ValidationError) as caught:
        validate_client_identity("garbage", key_pem(client_identity))
    assert caught.value.field == "clientCertificate"


def test_ca_file_is_read_and_checked(tls_ca_file: Path, tmp_path: Path) -> None:
    """IGRIS_UPSTREAM_CA_FILE is read once; a missing or bad file is a clear error."""
    assert "BEGIN CERTIFICATE" in load_ca_file(tls_ca_file)
    with pytest.raises(ValidationError) as caught:
        load_ca_file(tmp_path / "missing.pem")
    assert "cannot read" in caught.value.message
    bad = tmp_path / "bad.pem"
    bad.write_text("nope")
    with pytest.raises(ValidationError):
        load_ca_file(bad)


def test_default_context_verifies_chain_and_host_name() -> None:
    """The base context verifies certificates and host names, TLS 1.2 or newer."""
    context = _tls.base_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_client_key_never_reaches_a_file_as_plaintext(
    monkeypatch: pytest.MonkeyPatch, client_identity: trustme.LeafCert, tmp_path: Path
) -> None:
    """The key OpenSSL loads is encrypted under a one-time password, in a file that vanishes."""
    written: list[bytes] = []
    paths: list[str] = []
    real_key_file = _tls._key_file

    def spy(data: bytes):  # type: ignore[no-untyped-def]
        written.append(data)
        manager = real_key_file(data)

        class Wrapper:
            def __enter__(self) -> str:
                path = manager.__enter__()
                paths.append(path)
                return path

            def __exit__(self, *exc: object) -> None:
                manager.__exit__(*exc)

        return Wrapper()

    monkeypatch.setattr(_tls, "_key_file", spy)
    material = TlsMaterial(
        client_cert_pem=chain_pem(client_identity),
        client_key=Secret(client_identity.private_key_pem.bytes()),
    )
    build_context(material)
    key_body = "".join(key_pem(client_identity).strip().splitlines()[1:-1])
    assert b"ENCRYPTED PRIVATE KEY" in written[0]
    assert key_body.encode() not in written[0].replace(b"\n", b"")
    assert paths[0].startswith("/proc/self/fd/")  # memfd: no name in any file system
    assert not os.path.exists(paths[0])  # the descriptor is closed again


def test_client_key_fallback_file_is_removed(
    monkeypatch: pytest.MonkeyPatch, client_identity: trustme.LeafCert, tmp_path: Path
) -> None:
    """Without memfd_create, the 0600 file in a 0700 directory is gone after loading."""
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    modes: list[tuple[int, int]] = []
    real_load = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: object, **kwargs: object) -> None:
        modes.append(
            (os.stat(certfile).st_mode & 0o777, os.stat(os.path.dirname(certfile)).st_mode & 0o777)
        )
        real_load(self, certfile, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    build_context(
        TlsMaterial(
            client_cert_pem=chain_pem(client_identity),
            client_key=Secret(client_identity.private_key_pem.bytes()),
        )
    )
    assert modes == [(0o600, 0o700)]
    assert list(tmp_path.iterdir()) == []


def test_context_cache_builds_once_per_connection_version(
    tls_ca: trustme.CA, client_identity: trustme.LeafCert
) -> None:
    """One context per (slug, version); a warm hit never asks for the material (no unseal)."""
    calls: list[int] = []

    def material() -> TlsMaterial:
        calls.append(1)
        return TlsMaterial(
            ca_pem=tls_ca.cert_pem.bytes().decode(),
            client_cert_pem=chain_pem(client_identity),
            client_key=Secret(client_identity.private_key_pem.bytes()),
        )

    cache = ContextCache()
    first = cache.get("internal", 1, material)
    assert cache.get("internal", 1, material) is first
    assert len(calls) == 1
    rotated = cache.get("internal", 2, material)
    assert rotated is not first
    assert len(calls) == 2
    cache.discard("internal")
    assert len(cache) == 0


def test_context_cache_is_bounded() -> None:
    """The cache drops the least recently used entries past its size."""
    cache = ContextCache(maxsize=2)
    a = cache.get("a", 1, TlsMaterial())
    cache.get("b", 1, TlsMaterial())
    cache.get("a", 1, TlsMaterial())
    cache.get("c", 1, TlsMaterial())
    assert len(cache) == 2
    assert cache.get("a", 1, TlsMaterial()) is a
    with pytest.raises(ValueError, match="maxsize"):
        ContextCache(maxsize=0)


def test_connections_without_material_share_the_default_context(tls_ca_file: Path) -> None:
    """Connections with no CA or client certificate share one context (one pool)."""
    cache = ContextCache(ca_file_pem=load_ca_file(tls_ca_file))
    assert cache.get("a", 1, TlsMaterial()) is cache.get("b", 7, TlsMaterial()) is cache.default


def test_material_repr_hides_the_key(client_identity: trustme.LeafCert) -> None:
    """TlsMaterial's repr never shows the private key."""
    material = TlsMaterial(
        client_cert_pem="cert", client_key=Secret(client_identity.private_key_pem.bytes())
    )
    assert "PRIVATE" not in repr(material)


def test_non_tls_failures_are_not_tls_errors() -> None:
    """A refused TCP connection or a timeout is not mapped to upstream_tls_error."""
    assert tls_error_for(ConnectionRefusedError(111, "refused"), "h") is None
    assert tls_error_for(TimeoutError(), "h") is None
    assert tls_error_for(aiohttp.ServerDisconnectedError(), "h") is None


def test_tls_alert_after_the_handshake_is_a_tls_error() -> None:
    """A TLS 1.3 alert on the first read (aiohttp's ClientOSError from an SSLError) maps."""
    cause = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert")
    cause.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    exc = aiohttp.ClientOSError(*cause.args)
    exc.__cause__ = cause
    error = tls_error_for(exc, "mcp.internal.test")
    assert isinstance(error, UpstreamError)
    assert error.code == "upstream_tls_error"
    assert error.message == (
        "TLS to upstream mcp.internal.test failed: the upstream requires a client certificate"
    )


def test_ec_and_rsa_keys_both_work(tls_ca: trustme.CA) -> None:
    """RSA and EC client keys are accepted (trustme issues either)."""
    for key_type in (trustme.KeyType.RSA, trustme.KeyType.ECDSA):
        leaf = tls_ca.issue_cert(common_name=f"client-{key_type.name}", key_type=key_type)
        validate_client_identity(chain_pem(leaf), key_pem(leaf))


def test_non_signing_key_is_refused(client_identity: trustme.LeafCert) -> None:
    """A key of another kind than the certificate's is refused without a crash."""
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValidationError) as caught:
        validate_client_identity(chain_pem(client_identity), other.decode())
    assert caught.value.field == "clientKey"


@given(st.text(max_size=200), st.binary(max_size=200))
def test_client_identity_never_fails_otherwise(certificate: str, key: bytes) -> None:
    """Any text as certificate and any bytes as key: a 422 naming one of the two fields."""
    with pytest.raises(ValidationError) as caught:
        validate_client_identity(
            "-----BEGIN CERTIFICATE-----\n" + certificate,
            Secret(b"-----BEGIN PRIVATE KEY-----\n" + key),
        )
    assert caught.value.field in ("clientCertificate", "clientKey")
