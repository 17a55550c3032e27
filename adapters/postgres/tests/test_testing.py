"""TempCluster: a throwaway server that restarts with its data and leaves nothing behind."""

from __future__ import annotations

import psycopg
from igris_mw_postgres.testing import TempCluster, create_database, drop_database


def test_restart_keeps_data_and_exit_removes_everything(private_cluster: TempCluster) -> None:
    """Data written before restart() is there after it; leaving the block deletes the directory."""
    dsn = create_database(private_cluster.dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (42)")
    private_cluster.restart()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(42,)]
    drop_database(private_cluster.dsn, dsn)
    directory = private_cluster.directory
    private_cluster.__exit__(None, None, None)
    assert not directory.exists()
    assert not private_cluster.running
