"""Where the Postgres tests get a database.

``IGRIS_TEST_POSTGRES_DSN`` when set (its user needs CREATEDB); otherwise one
throwaway cluster per session from the machine's ``initdb``/``pg_ctl``. Each
test gets its own empty database. No binaries: skip, or fail when
``IGRIS_TEST_REQUIRE_BACKENDS=1`` (CI never silently skips).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from igris_mw_postgres import PostgresStore
from igris_mw_postgres.testing import TempCluster, create_database, drop_database, find_bindir


def _no_server(what: str) -> None:
    message = (
        f"{what}: no PostgreSQL server binaries (initdb, pg_ctl) on PATH or under "
        "/usr/lib/postgresql/*/bin; install the postgresql server package or set "
        "IGRIS_TEST_POSTGRES_DSN"
    )
    if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """A DSN whose user may create databases."""
    given = os.environ.get("IGRIS_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    if find_bindir() is None:
        _no_server("the Postgres tests need a server")
    with TempCluster() as cluster:
        yield cluster.dsn


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    dsn = create_database(pg_admin_dsn)
    yield dsn
    drop_database(pg_admin_dsn, dsn)


@pytest.fixture
async def pg_store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    """An opened store on a fresh database, closed afterwards."""
    store = PostgresStore(pg_dsn)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def private_cluster() -> Iterator[TempCluster]:
    """A cluster of this test's own, for tests that stop or restart the server."""
    if find_bindir() is None:
        _no_server("this test restarts a server of its own")
    with TempCluster() as cluster:
        yield cluster
