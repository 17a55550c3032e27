"""Checking a connection's TLS material: CA certificates, client certificate and key.

Pure (``cryptography`` and ``ssl`` only, no aiohttp), so the management API,
the CLI and the service use it without importing the forwarder. Messages name
the field and never echo a key.

An expired client certificate is refused (422), not warned about: every
handshake with it would fail anyway, and a 422 when it is stored is easier to
act on than a 502 on the first request.
"""

from __future__ import annotations

import os
import ssl
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import ValidationError
from .models import Secret

__all__ = [
    "MAX_CA_PEM",
    "MAX_CERT_PEM",
    "MAX_KEY_PEM",
    "load_ca_file",
    "validate_ca_certificate",
    "validate_client_identity",
]

# Generous for a chain or a bundle, small enough that a hostile body cannot
# make OpenSSL chew on megabytes.
MAX_CA_PEM = 256 * 1024
MAX_CERT_PEM = 64 * 1024
MAX_KEY_PEM = 16 * 1024

_PEM_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"


def _pem_text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, "must be a PEM string")
    if len(value) > limit:
        raise ValidationError(field, f"is longer than {limit} characters")
    if "\x00" in value:
        raise ValidationError(field, "must not contain NUL characters")
    try:
        value.encode("ascii")
    except UnicodeEncodeError:
        raise ValidationError(field, "must be ASCII PEM text") from None
    return value


def _certificates(pem: str, field: str) -> list[x509.Certificate]:
    if _PEM_CERT_BEGIN not in pem:
        raise ValidationError(field, "is not a PEM certificate (no BEGIN CERTIFICATE block)")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except ValueError:
        raise ValidationError(field, "is not a valid PEM certificate") from None
    if not certs:  # pragma: no cover - cryptography raises on an empty list
        raise ValidationError(field, "holds no certificate")
    return certs


def validate_ca_certificate(value: object, field: str = "caCertificate") -> str:
    """Check a connection's CA certificate(s) and return the PEM text.

    Raises:
        ValidationError: not a string, too long, not parseable, or OpenSSL
            refuses it as a trust anchor.
    """
    pem = _pem_text(value, field, MAX_CA_PEM)
    _certificates(pem, field)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise ValidationError(field, "cannot be used as a CA certificate") from None
    return pem


def _load_private_key(key_pem: str, field: str) -> PrivateKeyTypes:
    if "PRIVATE KEY-----" not in key_pem:
        raise ValidationError(field, "is not a PEM private key (no BEGIN ... PRIVATE KEY block)")
    try:
        return serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    except TypeError:
        raise ValidationError(
            field, "is encrypted; give the key without a passphrase (it is sealed at rest)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValidationError(field, "is not a valid PEM private key") from None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def validate_client_identity(
    cert_value: object,
    key_value: object,
    *,
    now: datetime | None = None,
    cert_field: str = "clientCertificate",
    key_field: str = "clientKey",
) -> tuple[str, Secret]:
    """Check a client certificate chain and its private key; return (chain PEM, key).

    The first certificate is the leaf: its public key must match the key, and
    it must not have expired (an expired client certificate is refused, not
    warned about: every handshake with it would fail anyway, and a 422 at
    create time is easier to act on than a 502 on the first request).
    Error messages never contain the key.

    Raises:
        ValidationError: a PEM that does not parse, an encrypted key, a key
            that does not match the certificate, an expired certificate.
    """
    cert_pem = _pem_text(cert_value, cert_field, MAX_CERT_PEM)
    if isinstance(key_value, Secret):
        try:
            key_text = key_value.reveal().decode("ascii")
        except UnicodeDecodeError:
            raise ValidationError(key_field, "must be ASCII PEM text") from None
    else:
        key_text = key_value  # type: ignore[assignment]
    key_pem = _pem_text(key_text, key_field, MAX_KEY_PEM)
    certs = _certificates(cert_pem, cert_field)
    leaf = certs[0]
    key = _load_private_key(key_pem, key_field)
    if not isinstance(
        key,
        rsa.RSAPrivateKey
        | ec.EllipticCurvePrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise ValidationError(key_field, "is not an RSA, EC or EdDSA private key")
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise ValidationError(key_field, "does not match the client certificate's public key")
    moment = now or datetime.now(UTC)
    if leaf.not_valid_after_utc <= moment:
        raise ValidationError(
            cert_field,
            f"expired on {leaf.not_valid_after_utc.isoformat()}; issue a new one",
        )
    return cert_pem, Secret(key_pem.encode("ascii"))


def load_ca_file(path: str | os.PathLike[str], field: str = "upstreamCaFile") -> str:
    """Read and check the operator's CA file (``IGRIS_UPSTREAM_CA_FILE``)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(field, f"cannot read the CA file {os.fspath(path)!r}") from exc
    return validate_ca_certificate(text, field)
