"""The user reference ships inside the repository, and its links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) links, and bare paths in code spans such as `../shared/X.md`.
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_CODE_PATH = re.compile(r"`(\.\./[^`\s]+)`")


def _targets(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    found = _LINK.findall(text) + _CODE_PATH.findall(text)
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # no URLs


def _resolve(page: Path, target: str) -> Path:
    return (page.parent / target.split("#", 1)[0]).resolve()


def test_reference_pages_exist() -> None:
    """docs/ holds the REST API, gateway, errors and backends reference and an index."""
    for name in ("README.md", "api.md", "gateway.md", "errors.md", "backends.md", "crypto.md"):
        assert (ROOT / "docs" / name).is_file(), name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_points_outside_the_repository(page: Path) -> None:
    """A link or path in README.md or docs/ never leads out of the repository (../shared)."""
    outside = [t for t in _targets(page) if not _resolve(page, t).is_relative_to(ROOT)]
    assert outside == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    """Every relative link in README.md and docs/ names a file or folder that exists."""
    missing = [
        t
        for t in _LINK.findall(page.read_text(encoding="utf-8"))
        if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t) and not _resolve(page, t).exists()
    ]
    assert missing == []


def test_readme_links_the_reference() -> None:
    """The README sends users to docs/ for the reference, not to a contract file."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/README.md)" in text
    assert "CONTRACT.md" not in text
