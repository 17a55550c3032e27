"""Crypto providers: how a credential is sealed before it reaches a store.

A ``CryptoProvider`` seals bytes under *associated data* that binds the
envelope to its record (see ``binding``), so that an envelope copied into
another record, or left in place while the record's upstream URL or auth
type is changed behind the gateway's back, cannot be opened.

Built in: the local ``Keyring`` (AES-256-GCM envelope encryption under a
master key; ``igris_mw._keyring`` and ``docs/crypto.md``). Adapters add
more through the ``igris_mw.crypto`` entry-point group (for example Vault
Transit in ``igris-mw-vault``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._errors import InvalidCiphertext, UnknownKeyId

__all__ = ["CLIENT_KEY_LABEL", "CryptoProvider", "InvalidCiphertext", "UnknownKeyId", "binding"]

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

    @property
    def primary_key_id(self) -> str:
        """The id new envelopes are sealed with."""
        ...

    async def aclose(self) -> None:
        """Release resources (HTTP sessions); idempotent."""
        ...
