"""PostgreSQL store for igris-mw (URL schemes ``postgresql://`` and ``postgres://``)."""

from __future__ import annotations

from ._store import SCHEMA_VERSION, PostgresStore
from ._version import __version__

__all__ = ["SCHEMA_VERSION", "PostgresStore", "__version__"]
