"""Fixtures for the contract tests: one real upstream per session, one serve per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))

from contract_harness import ScriptedUpstream, Served, serve
from upstream import UpstreamServer


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    """A real upstream MCP server (Streamable HTTP at /mcp, legacy at /legacy)."""
    server = UpstreamServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The shared ``igris-mw serve``: embedded SQLite, loopback upstreams allowed.

    A module that needs other options, or a store of its own (listings), defines its own.
    """
    home = tmp_path_factory.mktemp("contract") / "home"
    with serve(home) as served:
        yield served


@pytest.fixture(scope="session")
def scripted() -> Iterator[ScriptedUpstream]:
    """The scripted plain-HTTP upstream (see contract_harness.ScriptedUpstream)."""
    server = ScriptedUpstream()
    server.start()
    yield server
    server.stop()
