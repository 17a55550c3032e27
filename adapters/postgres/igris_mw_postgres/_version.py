"""The igris-mw-postgres version: the one place it is written (hatch reads it too)."""

__version__ = "0.1.0"
