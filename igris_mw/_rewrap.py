"""Online re-sealing of every stored credential under the primary key.

Provider-agnostic (it only uses ``Store`` and ``CryptoProvider``): after a
Transit key rotation, or a master-key rotation of the local keyring, every
connection's envelope is moved to the current key while the gateway keeps
serving. Each record is rewritten by a version-guarded update, so a
concurrent rotate or edit is never overwritten: on a conflict the record is
read again and the rewrap retried.
"""

from __future__ import annotations

from typing import Any

import attrs

from ._errors import NotFound, VersionConflict
from .crypto import CLIENT_KEY_LABEL, CryptoProvider, binding
from .models import Connection
from .storage import Store

__all__ = ["rewrap_all"]

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
        service_or_store: an ``igris_mw._service.Service`` (its store and
            crypto are used) or a ``Store``.
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
