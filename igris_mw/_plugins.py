"""URL scheme -> store class / crypto provider class, through entry points.

The core registers its own SQLite store and keyring in ``pyproject.toml``
the same way adapters do, so there is one loading path. An entry point in
``igris_mw.stores`` names a class with ``from_url(url) -> Store``; one in
``igris_mw.crypto`` names a class with ``from_url(url, environ) -> CryptoProvider``.
Plug-ins reach these names through the public ``igris_mw.plugins``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from .crypto import CryptoProvider
from .storage import Store

__all__ = [
    "CRYPTO",
    "STORES",
    "crypto_from_url",
    "installed_schemes",
    "redact_url",
    "store_from_url",
]

STORES = "igris_mw.stores"
CRYPTO = "igris_mw.crypto"
DEFAULT_CRYPTO = "keyring:"


@cache
def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def installed_schemes(group: str = STORES) -> list[str]:
    """The URL schemes registered in the entry-point ``group``, sorted."""
    return sorted(_entry_points(group))


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
    except ValueError:
        return "<unparseable URL>"


def _scheme(url: str, what: str) -> str:
    if not isinstance(url, str) or ":" not in url:
        raise ConfigurationError(
            f"{what} URL {redact_url(str(url))!r} has no scheme; "
            f"expected e.g. sqlite:///path/igris.db"
        )
    return url.split(":", 1)[0].lower()


def _load(group: str, scheme: str, url: str, what: str) -> Any:
    eps = _entry_points(group)
    ep = eps.get(scheme)
    if ep is None:
        installed = ", ".join(f"{s}://" if group == STORES else s for s in sorted(eps)) or "none"
        hint = ""
        if scheme in ("postgresql", "postgres"):
            hint = " (pip install igris-mw-postgres)"
        elif scheme in ("vault", "openbao", "vault-transit"):
            hint = " (pip install igris-mw-vault)"
        raise ConfigurationError(
            f"unknown {what} scheme {scheme!r} in {redact_url(url)!r}{hint}; installed: {installed}"
        )
    try:
        return ep.load()
    except ImportError as exc:
        raise ConfigurationError(
            f"the {what} plug-in for {scheme!r} is installed but cannot be imported: {exc}"
        ) from exc


def store_from_url(url: str) -> Store:
    """Build (not open) the store for ``url``.

    Raises:
        ConfigurationError: no scheme, an unknown scheme (the message lists
            the installed ones) or a URL the backend rejects.
    """
    scheme = _scheme(url, "store")
    cls = _load(STORES, scheme, url, "store")
    return cast(Store, cls.from_url(url))


def crypto_from_url(
    url: str | None = None, environ: Mapping[str, str] | None = None
) -> CryptoProvider:
    """Build the crypto provider for ``url`` (default: the local keyring).

    Raises:
        ConfigurationError: unknown scheme, malformed or missing master key.
    """
    url = url or DEFAULT_CRYPTO
    env = os.environ if environ is None else environ
    scheme = _scheme(url, "crypto")
    cls = _load(CRYPTO, scheme, url, "crypto")
    return cast(CryptoProvider, cls.from_url(url, env))
