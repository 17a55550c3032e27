"""igris-mw on HashiCorp Vault / OpenBao.

* ``VaultKVStore``: the store on a KV v2 mount (``vault://``, ``openbao://``);
* ``TransitProvider``: credentials sealed by a derived Transit key (``vault-transit://``);
* ``rewrap_all``: move every stored envelope to the primary key, online.
"""

from __future__ import annotations

from igris_mw.crypto import rewrap_all

from ._kv import VaultKVStore
from ._transit import TransitProvider

__all__ = ["TransitProvider", "VaultKVStore", "rewrap_all"]
