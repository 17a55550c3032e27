"""PostgreSQL store for igris-mw (URL schemes ``postgresql://`` and ``postgres://``)."""

from __future__ import annotations

from ._store import SCHEMA_VERSION, PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore"]
__version__ = "0.1.0"
