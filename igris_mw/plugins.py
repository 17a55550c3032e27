"""Plug-in loading by URL scheme (public).

A store registers a class with ``from_url(url) -> Store`` in the entry-point
group ``STORES`` (``"igris_mw.stores"``); a crypto provider one with
``from_url(url, environ) -> CryptoProvider`` in ``CRYPTO``
(``"igris_mw.crypto"``). ``store_from_url`` / ``crypto_from_url`` build
whatever is installed for a URL, as ``serve``, the CLI and ``IgrisGateway``
do. ``redact_url`` masks a URL's password, for a plug-in's messages and
reprs. ``docs/backends.md`` shows a plug-in end to end.
"""

from __future__ import annotations

from ._plugins import (
    CRYPTO,
    STORES,
    crypto_from_url,
    installed_schemes,
    redact_url,
    store_from_url,
)

__all__ = [
    "CRYPTO",
    "STORES",
    "crypto_from_url",
    "installed_schemes",
    "redact_url",
    "store_from_url",
]
