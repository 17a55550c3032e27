"""TLS to upstreams: SSL contexts, PEM validation, and the TLS error mapping.

Every ``https://`` upstream is verified (chain and host name) against the
system CAs, plus the operator's CA file (``IGRIS_UPSTREAM_CA_FILE``), plus a
connection's own ``caCertificate``: trust is only ever added, never replaced,
so a connection cannot turn verification off. A connection may also carry a
client certificate chain (public) and its private key (a secret).

``ssl.SSLContext.load_cert_chain`` only takes file paths, so the private key
has to be handed to OpenSSL through a file. It is never written as plaintext:
1. the key is re-encrypted (PKCS#8 PBES2: AES-256-CBC, PBKDF2-SHA256, via
   ``cryptography``'s ``BestAvailableEncryption``) under a one-time random password
   that lives only in this process's memory and is given to
   ``load_cert_chain(password=...)``;
2. that ciphertext goes to an anonymous memory file (``os.memfd_create`` on
   Linux: no name in any file system, never on disk unless the machine swaps,
   gone when its descriptor is closed right after loading); elsewhere, to a
   0600 file in a fresh 0700 directory, removed before this function returns.
So even the fallback file holds only ciphertext whose password died with the
call.

Contexts are built once per connection version (a context is a few hundred
microseconds of OpenSSL work and, more to the point, aiohttp pools
connections per context object: a new context per request would defeat the
pool) and kept in a small LRU keyed by ``(slug, version, stamp)``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator

import aiohttp
import attrs
from cryptography.hazmat.primitives import serialization

from .._errors import UpstreamError, ValidationError
from ..models import Secret

__all__ = [
    "ContextCache",
    "TlsMaterial",
    "base_context",
    "build_context",
    "is_tls_error",
    "tls_error_for",
]


@attrs.frozen
class TlsMaterial:
    """What one connection adds to the base context (all optional).

    ``ca_pem`` and ``client_cert_pem`` are public; ``client_key`` is the
    unsealed private key, shown as ``Secret('**********')`` everywhere.
    """

    ca_pem: str | None = None
    client_cert_pem: str | None = None
    client_key: Secret | None = attrs.field(default=None, repr=False)

    @property
    def is_default(self) -> bool:
        return self.ca_pem is None and self.client_cert_pem is None


# --- contexts ------------------------------------------------------------------


def base_context(ca_pem: str | None = None) -> ssl.SSLContext:
    """A verifying client context: system CAs (+ ``ca_pem``), host names checked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    return context


@contextlib.contextmanager
def _key_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open that holds ``data`` and disappears on exit."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("igris-client-key", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="igris-tls-") as directory:  # 0700
        path = os.path.join(directory, "key.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        try:
            yield path
        finally:
            os.unlink(path)


def _load_client_identity(context: ssl.SSLContext, cert_pem: str, key: Secret) -> None:
    private = serialization.load_pem_private_key(key.reveal(), password=None)
    password = secrets.token_bytes(32)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    with _key_file(cert_pem.encode("ascii") + b"\n" + encrypted) as path:
        context.load_cert_chain(path, password=password)


def build_context(material: TlsMaterial, ca_file_pem: str | None = None) -> ssl.SSLContext:
    """The context for one connection: base trust + its CA + its client identity.

    Raises:
        ValidationError: the material is unusable (it was checked on write, so
            this means the stored record is broken).
    """
    context = base_context(ca_file_pem)
    if material.ca_pem:
        try:
            context.load_verify_locations(cadata=material.ca_pem)
        except (ssl.SSLError, ValueError):
            raise ValidationError("caCertificate", "cannot be used as a CA certificate") from None
    if material.client_cert_pem is not None:
        if material.client_key is None:
            raise ValidationError("clientKey", "is required with clientCertificate")
        try:
            _load_client_identity(context, material.client_cert_pem, material.client_key)
        except (ssl.SSLError, ValueError, TypeError):
            raise ValidationError(
                "clientKey", "cannot be loaded with the client certificate"
            ) from None
    return context


class ContextCache:
    """SSL contexts per (connection slug, version, stamp), least recently used dropped.

    One context object per connection version keeps aiohttp's pool keyed on
    it stable, so warm requests reuse their TLS connections. A new version
    (rotate, PATCH) gets a new key; the old entry simply ages out, and
    ``discard(slug)`` drops it at once when a connection changes or goes.
    ``stamp`` tells apart two records that share a slug and a version (a
    connection deleted and created again): the gateway passes a digest of
    the stored TLS material, whose key envelope is new with every seal.
    """

    def __init__(self, ca_file_pem: str | None = None, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._ca_file_pem = ca_file_pem
        self._maxsize = maxsize
        self._entries: collections.OrderedDict[tuple[str, int, object], ssl.SSLContext] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self.default: ssl.SSLContext = base_context(ca_file_pem)

    def get(
        self,
        slug: str,
        version: int,
        material: TlsMaterial | Callable[[], TlsMaterial],
        stamp: object = None,
    ) -> ssl.SSLContext:
        """The context for this connection version, built on first use.

        ``material`` may be a callable so that a warm hit never unseals the key.
        """
        key = (slug, version, stamp)
        with self._lock:
            context = self._entries.get(key)
            if context is not None:
                self._entries.move_to_end(key)
                return context
        resolved = material() if callable(material) else material
        context = (
            self.default if resolved.is_default else build_context(resolved, self._ca_file_pem)
        )
        with self._lock:
            self._entries[key] = context
            self._entries.move_to_end(key)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
        return context

    def discard(self, slug: str) -> None:
        """Forget every version of one connection."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == slug]:
                del self._entries[key]

    def clear(self) -> None:
        """Forget every connection's context (the default one stays)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# --- errors --------------------------------------------------------------------

# OpenSSL X509_V_ERR_* codes an operator can act on; anything else is "not verified".
_VERIFY_REASONS = {
    9: "the certificate is not valid yet",
    10: "the certificate has expired",
    18: "the certificate is self-signed and not trusted",
    19: "the chain ends in a CA that is not trusted",
    20: "the certificate's issuer is not trusted (configure its CA)",
    21: "the certificate's issuer is not trusted (configure its CA)",
    62: "the certificate is not valid for this host name",
    64: "the certificate is not valid for this IP address",
}

# OpenSSL alert reasons (``SSLError.reason``) from an upstream that refuses
# the client's certificate: none sent, or one it does not accept.
_CLIENT_CERT_REQUIRED = ("CERTIFICATE_REQUIRED",)
_CLIENT_CERT_REFUSED = (
    "HANDSHAKE_FAILURE",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "ACCESS_DENIED",
)


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # Before the ssl.SSLError check: aiohttp's certificate error is itself an
        # ssl.CertificateError, without OpenSSL's verify_code; the original has it.
        if isinstance(current, aiohttp.ClientConnectorCertificateError):
            cert_error = current.certificate_error
            if isinstance(cert_error, ssl.SSLError):
                return cert_error
        if isinstance(current, ssl.SSLError):
            return current
        if isinstance(current, aiohttp.ClientSSLError | aiohttp.ClientConnectorError):
            os_error = getattr(current, "os_error", None)
            if isinstance(os_error, ssl.SSLError):
                return os_error
        current = current.__cause__ or current.__context__
    return None


def _alert_in(error: ssl.SSLError, alerts: tuple[str, ...]) -> bool:
    reason = (error.reason or "").upper()
    return any(alert in reason for alert in alerts)


def is_tls_error(exc: BaseException) -> bool:
    """Whether an upstream failure was TLS (handshake, verification, client cert)."""
    return (
        isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError)
        or _ssl_cause(exc) is not None
    )


def tls_error_for(exc: BaseException, host: str) -> UpstreamError | None:
    """502 ``upstream_tls_error`` naming only ``host``, or None if ``exc`` is not TLS.

    Never uses ``str(exc)``: aiohttp's messages carry the URL, and a proxy's
    connection key carries its credentials.
    """
    if not is_tls_error(exc):
        return None
    cause = _ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = _VERIFY_REASONS.get(cause.verify_code, "its certificate was not verified")
    elif cause is not None and _alert_in(cause, _CLIENT_CERT_REQUIRED):
        why = "the upstream requires a client certificate"
    elif cause is not None and _alert_in(cause, _CLIENT_CERT_REFUSED):
        why = "the upstream refused the handshake (is the client certificate accepted there?)"
    else:
        why = "the TLS handshake failed"
    return UpstreamError(f"TLS to upstream {host} failed: {why}", code="upstream_tls_error")
