"""The embedded default store (``sqlite://``): ``store`` runs it, ``schema`` lays it out.

The entry point ``sqlite = "igris_mw._sqlite:SQLiteStore"`` names this package.
"""

from __future__ import annotations

from .schema import SCHEMA_VERSION
from .store import SQLiteStore

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]
