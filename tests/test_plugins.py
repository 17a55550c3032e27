"""Store and crypto plug-ins are found by URL scheme; messages never show a password."""

from __future__ import annotations

import pytest

from igris_mw import ConfigurationError
from igris_mw._sqlite import SQLiteStore
from igris_mw.plugins import installed_schemes, redact_url, store_from_url
from igris_mw.testing import MemoryStore


def test_builtin_schemes_installed() -> None:
    """The core registers its sqlite and memory stores through entry points."""
    assert {"memory", "sqlite"} <= set(installed_schemes())


def test_store_from_url_picks_the_class_by_scheme() -> None:
    """sqlite:// builds a SQLiteStore and memory:// a MemoryStore, neither opened."""
    assert isinstance(store_from_url("sqlite:///some.db"), SQLiteStore)
    assert isinstance(store_from_url("SQLITE:///some.db"), SQLiteStore)
    assert isinstance(store_from_url("memory://"), MemoryStore)


def test_unknown_scheme_lists_installed_ones() -> None:
    """An unknown scheme's error names it and lists every installed scheme."""
    with pytest.raises(ConfigurationError) as info:
        store_from_url("mongodb://db.example/igris")
    message = str(info.value)
    assert "'mongodb'" in message
    for scheme in installed_schemes():
        assert f"{scheme}://" in message


def test_unknown_scheme_error_hides_password() -> None:
    """The unknown-scheme message shows the URL with its password masked."""
    with pytest.raises(ConfigurationError) as info:
        store_from_url("mongodb://admin:hunter2-secret@db.example/igris")
    assert "hunter2-secret" not in str(info.value)
    assert "admin:***@db.example" in str(info.value)


def test_missing_adapter_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A postgresql:// or vault:// URL without its adapter suggests the package to install."""
    from igris_mw import _plugins

    core_only = {
        k: v
        for k, v in _plugins._entry_points(_plugins.STORES).items()
        if k in ("sqlite", "memory")
    }
    monkeypatch.setattr(_plugins, "_entry_points", lambda group: core_only)
    with pytest.raises(ConfigurationError, match="igris-mw-postgres") as info:
        store_from_url("postgresql://u:pw-secret@localhost/db")
    assert "pw-secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="igris-mw-vault"):
        store_from_url("vault://vault.example:8200/secret")


@pytest.mark.parametrize("url", ["igris.db", "", "/var/lib/igris.db"])
def test_url_without_scheme(url: str) -> None:
    """A store URL without a scheme raises ConfigurationError with an example URL."""
    with pytest.raises(ConfigurationError, match=r"sqlite:///"):
        store_from_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://igris:s3cret@db:5432/igris", "postgresql://igris:***@db:5432/igris"),
        ("postgresql://:s3cret@db/igris", "postgresql://:***@db/igris"),
        ("postgresql://u:p%40ss@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require"),
        ("postgresql://igris@db/igris", "postgresql://igris@db/igris"),
        ("sqlite:///igris.db", "sqlite:///igris.db"),
    ],
)
def test_redact_url_masks_passwords(url: str, expected: str) -> None:
    """redact_url replaces a password with *** and leaves URLs without one unchanged."""
    assert redact_url(url) == expected


def test_redact_url_unparseable() -> None:
    """A URL that cannot be parsed is not echoed at all."""
    assert redact_url("postgresql://u:pw@[::1") == "<unparseable URL>"
