"""Test helpers for igris-mw users and backend authors.

* ``MemoryStore``: the whole ``Store`` protocol in memory (``memory://``).
* ``FixedKeyring``: a keyring with deterministic master keys.
* ``storage_suite`` / ``crypto_suite``: the conformance suites a store or a
  crypto provider proves itself with (import them as submodules; they need
  pytest and hypothesis).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._memory import MemoryStore

if TYPE_CHECKING:
    from ._fixed_keyring import FixedKeyring

__all__ = ["FixedKeyring", "MemoryStore"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the store helpers do not pull in the keyring.
    if name == "FixedKeyring":
        from ._fixed_keyring import FixedKeyring

        return FixedKeyring
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
