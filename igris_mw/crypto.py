"""Crypto providers: how a credential is sealed before it reaches a store.

A ``CryptoProvider`` seals bytes under *associated data* that binds the
envelope to its record (see ``binding``), so that an envelope copied into
another record, or left in place while the record's upstream URL or auth
type is changed behind the gateway's back, cannot be opened.

Built in: the local ``Keyring`` (AES-256-GCM envelope encryption under a
master key; ``igris_mw._keyring`` and ``docs/crypto.md``). Adapters add
more through the ``igris_mw.crypto`` entry-point group (for example Vault
Transit in ``igris-mw-vault``).

``rewrap_all`` re-seals every stored credential under the primary key,
online; it needs only the ``Store`` and ``CryptoProvider`` protocols, so it
works for any pair of plug-ins (``igris-mw crypto rewrap`` runs it).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

from ._audit.chain import derive_audit_key
from ._errors import InvalidCiphertext, NotFound, UnknownKeyId, VersionConflict
from .models import Connection
from .storage import AuditKey, Store

__all__ = [
    "CLIENT_KEY_LABEL",
    "AuditKey",
    "CryptoProvider",
    "InvalidCiphertext",
    "UnknownKeyId",
    "binding",
    "derive_audit_key",
    "rewrap_all",
]

_BINDING_PREFIX = b"igris-mw/credential/v1"

#: Appended to a connection's ``binding`` for its TLS client key's envelope, so
#: the key's and the credential's envelopes (same record) can never be swapped.
CLIENT_KEY_LABEL = len(b"clientKey").to_bytes(4, "big") + b"clientKey"


def binding(slug: str, credential_version: int, upstream_url: str, auth_type: str) -> bytes:
    """The associated data that binds a credential envelope to its record.

    Length-prefixed fields, so no two different records share a binding.
    """
    if not isinstance(credential_version, int) or credential_version < 0:
        raise ValueError("credential_version must be a non-negative int")
    out = bytearray(_BINDING_PREFIX)
    for part in (slug, str(credential_version), upstream_url, str(auth_type)):
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


@runtime_checkable
class CryptoProvider(Protocol):
    """Seals and opens credential envelopes.

    Contract (``igris_mw.testing.crypto_suite`` checks it):

    * ``decrypt(encrypt(p, ad), ad) == p`` for any bytes ``p`` (0-16 KiB)
      and any associated data ``ad``.
    * Every failure of an envelope (tampered, truncated, extended, another
      ``ad``, a key that is not configured) raises ``InvalidCiphertext``
      (``UnknownKeyId``, a subclass, when the key id is readable but not
      configured: its message names the id, never a key). Never returns bytes
      on failure.
    * Two encryptions of the same plaintext differ.
    * ``rewrap(e, ad)`` returns an envelope that decrypts to the same
      plaintext under the provider's current primary key.
    * A provider that cannot be reached (a sealed Vault) raises
      ``CryptoUnavailable``, not ``InvalidCiphertext``.
    * Misuse (``str`` instead of ``bytes``) is ``TypeError``.
    * ``repr()`` never shows key material.
    """

    name: str

    async def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Seal ``plaintext``; the result is safe to store."""
        ...

    async def decrypt(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Open an envelope sealed with the same ``associated_data``.

        Raises:
            InvalidCiphertext: the envelope cannot be opened.
        """
        ...

    async def rewrap(self, envelope: bytes, associated_data: bytes) -> bytes:
        """Move an envelope to the primary key without changing its plaintext.

        Raises:
            InvalidCiphertext: the envelope cannot be opened.
        """
        ...

    def key_id_of(self, envelope: bytes) -> str | None:
        """The id of the key an envelope was sealed with, or ``None`` if unreadable."""
        ...

    async def audit_key(self, key_id: str | None = None) -> AuditKey:
        """The key audit chains are MACed under: the current one (``None``),
        or an older one by the id recorded in events sealed with it (so
        chains sealed before a key rotation still verify). Deterministic:
        the same id always gives the same key.

        Raises:
            UnknownKeyId: no key of that id is configured.
            CryptoUnavailable: the provider cannot be reached.
        """
        ...

    @property
    def primary_key_id(self) -> str:
        """The id new envelopes are sealed with."""
        ...

    async def aclose(self) -> None:
        """Release resources (HTTP sessions); idempotent."""
        ...


# -- rewrap: move every stored envelope to the primary key -----------------
# Each record is rewritten by a version-guarded update, so a concurrent
# rotate or edit is never overwritten: on a conflict the record is read
# again and the rewrap retried.

_RETRIES = 5
_PAGE = 200


async def _fresh(crypto: CryptoProvider, envelope: bytes | None, ad: bytes) -> bytes | None:
    """``envelope`` under the primary key, or ``None`` if it is already there (or absent)."""
    if envelope is None:
        return None
    fresh = await crypto.rewrap(envelope, ad)
    return None if crypto.key_id_of(fresh) == crypto.key_id_of(envelope) else fresh


async def _rewrap_one(store: Store, crypto: CryptoProvider, connection: Connection) -> bool:
    for _ in range(_RETRIES):
        ad = binding(
            connection.slug,
            connection.credential_version,
            connection.upstream_url,
            connection.auth_type.value,
        )
        fresh = await _fresh(crypto, connection.ciphertext, ad)
        tls = connection.tls
        # The TLS client key is sealed like the credential, under its own label.
        fresh_key = await _fresh(
            crypto, tls.client_key_ciphertext if tls else None, ad + CLIENT_KEY_LABEL
        )
        if fresh is None and fresh_key is None:
            return False  # already under the primary key: no write, no version bump
        changed = connection
        if fresh is not None:
            changed = attrs.evolve(changed, ciphertext=fresh)
        if fresh_key is not None and tls is not None:
            changed = attrs.evolve(changed, tls=attrs.evolve(tls, client_key_ciphertext=fresh_key))
        try:
            await store.update_connection(changed, expected_version=connection.version)
            return True
        except VersionConflict:
            try:
                connection = await store.get_connection(connection.slug)
            except NotFound:
                return False
        except NotFound:
            return False
    raise VersionConflict(
        f"connection {connection.slug!r} kept changing during rewrap; run it again"
    )


async def rewrap_all(service_or_store: Any, crypto: CryptoProvider | None = None) -> int:
    """Re-seal every stored credential under ``crypto``'s primary key.

    Args:
        service_or_store: an object with ``store`` and ``crypto``
            attributes (the management service) or a ``Store``.
        crypto: the provider; defaults to the service's.

    Returns:
        How many envelopes were moved to another key.

    Raises:
        InvalidCiphertext: an envelope cannot be opened (its binding or key is wrong).
        VersionConflict: a record kept changing through every retry.
    """
    store: Store = getattr(service_or_store, "store", service_or_store)
    provider = crypto if crypto is not None else service_or_store.crypto
    moved = 0
    cursor: str | None = None
    while True:
        page = await store.list_connections(limit=_PAGE, cursor=cursor)
        for connection in page.items:
            if await _rewrap_one(store, provider, connection):
                moved += 1
        if page.next_cursor is None:
            return moved
        cursor = page.next_cursor
