"""The public interface: what ``igris_mw`` exports, and what plug-ins may import."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import igris_mw

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ROOT / "adapters"

# ``igris_mw._anything`` as a module path: ``import igris_mw._x``, ``from igris_mw._x``,
# ``from igris_mw import _x`` and the dotted name in text (a docstring pointing
# a plug-in author at a private module is the same mistake).
# Dunders (``__version__``) are public.
_PRIVATE = re.compile(
    r"igris_mw\._(?!_)\w+|from\s+igris_mw\s+import\s+(?:\([^)]*|[^\n(]*)\b_(?!_)\w+"
)


def _private_uses(text: str) -> list[str]:
    return [m.group(0) for m in _PRIVATE.finditer(text)]


def _adapter_files() -> list[Path]:
    return sorted(
        p
        for p in ADAPTERS.rglob("*")
        if p.suffix in (".py", ".toml", ".md") and ".venv" not in p.parts and p.is_file()
    )


def test_adapters_exist_to_be_checked() -> None:
    """The scan below sees both adapters' packages and tests (so it cannot pass on nothing)."""
    files = {p.relative_to(ADAPTERS).parts[:2] for p in _adapter_files()}
    for adapter, package in (("postgres", "igris_mw_postgres"), ("vault", "igris_mw_vault")):
        assert (adapter, package) in files
        assert (adapter, "tests") in files


def test_adapters_use_only_public_names() -> None:
    """No adapter module, test, README or pyproject names a private igris_mw._ module."""
    found = {
        str(p.relative_to(ROOT)): uses
        for p in _adapter_files()
        if (uses := _private_uses(p.read_text(encoding="utf-8")))
    }
    assert found == {}


@pytest.mark.parametrize(
    ("text", "private"),
    [
        ("from igris_mw._errors import NotFound", True),
        ("import igris_mw._sqlite.store", True),
        ("from igris_mw import _plugins", True),
        ("from igris_mw import (\n    _paging,", True),
        ("see ``igris_mw._audit_file.JsonlAuditSink``", True),
        ("from igris_mw.errors import NotFound", False),
        ("from igris_mw.testing.storage_suite import StoreSuite", False),
        ("from igris_mw import __version__", False),
        ("igris_mw.__version__", False),
        ("import igris_mw_postgres._store", False),
    ],
)
def test_private_name_scan(text: str, private: bool) -> None:
    """The scan flags every form of a private import and nothing public."""
    assert bool(_private_uses(text)) is private


def test_all_is_sorted_and_importable() -> None:
    """Every name in igris_mw.__all__ resolves, and __all__ is sorted without duplicates."""
    assert igris_mw.__all__ == sorted(set(igris_mw.__all__))
    for name in igris_mw.__all__:
        assert getattr(igris_mw, name) is not None, name
        namespace: dict[str, object] = {}
        exec(f"from igris_mw import {name}", namespace)
        assert namespace[name] is getattr(igris_mw, name)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "igris_mw.errors",
            [
                "IgrisError", "ConfigurationError", "ValidationError", "NotFound", "SlugTaken",
                "VersionConflict", "StoreUnavailable", "CryptoUnavailable", "InvalidCiphertext",
                "UnknownKeyId",
            ],
        ),
        (
            "igris_mw.paging",
            [
                "bad_cursor", "check_limit", "decode_cursor", "decode_seq_cursor",
                "decode_slug_cursor", "encode_cursor",
            ],
        ),
        ("igris_mw.plugins", ["redact_url", "store_from_url", "crypto_from_url", "STORES"]),
        ("igris_mw.crypto", ["CryptoProvider", "binding", "rewrap_all"]),
        (
            "igris_mw.storage",
            [
                "Store", "Capabilities", "Change", "ChangeListener", "notify_listeners",
                "seal_event", "seal_event_json", "verify_chain",
            ],
        ),
    ],
)  # fmt: skip
def test_plugin_interface_is_public(module: str, names: list[str]) -> None:
    """What a store or crypto plug-in needs is reachable from a public module and in its __all__."""
    mod = importlib.import_module(module)
    for name in names:
        assert name in mod.__all__, name
        assert getattr(mod, name) is not None


def test_public_modules_give_the_core_objects() -> None:
    """A public module re-exports the very objects the core raises and uses, not copies."""
    from igris_mw import _errors, _paging, _plugins, _rewrap, crypto, errors, paging, plugins

    assert _errors.NotFound is errors.NotFound
    assert _paging.encode_cursor is paging.encode_cursor
    assert _plugins.redact_url is plugins.redact_url
    assert _rewrap.rewrap_all is crypto.rewrap_all


def test_version_has_one_source() -> None:
    """__version__ comes from igris_mw/_version.py, the file hatch reads; no other copy."""
    from igris_mw._version import __version__

    assert igris_mw.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'path = "igris_mw/_version.py"' in pyproject
    assert "__version__ =" not in (ROOT / "igris_mw" / "__init__.py").read_text()
