"""`igris-mw serve --workers N` as real processes, and the SQLite change feed between processes."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest

from igris_mw._sqlite import SQLiteStore
from igris_mw._sqlite.store import CHANGE_POLL
from igris_mw.storage import Change
from igris_mw.testing.storage_suite import make_api_key, make_connection, make_event

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")
# The bound docs/workers.md states for a change made through another process.
BOUND = 1.0

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to map sockets")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve_workers(
    home: Path, workers: int, *args: str, env_extra: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes], Path]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(home)
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = "127.0.0.0/8"  # the test upstream is on loopback
    env.update(env_extra or {})
    log = home.parent / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "igris_mw.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
                *args,
            ],
            env=env,
            cwd=home.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while len(_children(proc.pid)) < workers or not _healthy(port):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield port, proc, log
    finally:
        while _OPEN:
            _OPEN.pop().close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _healthy(port: int) -> bool:
    try:
        status, _ = _request(_connect(port), "GET", "/healthz")
    except OSError:
        return False
    return status == 200


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


_OPEN: list[http.client.HTTPConnection] = []


def _connect(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    _OPEN.append(conn)  # closed by _serve_workers
    conn.connect()
    return conn


def _request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    key: str | None = None,
    body: object = None,
) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _owner(conn: http.client.HTTPConnection, port: int, pids: list[int]) -> int:
    """The worker process holding the server side of ``conn``."""
    assert conn.sock is not None
    client_port = conn.sock.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    assert inode is not None
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError("no worker holds the connection")


def _one_connection_per_worker(port: int, pids: list[int]) -> dict[int, http.client.HTTPConnection]:
    found: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    for _ in range(200):
        conn = _connect(port)
        assert _request(conn, "GET", "/healthz")[0] == 200
        pid = _owner(conn, port, pids)
        if pid in found:
            spare.append(conn)  # held open, so the next accept may go elsewhere
        else:
            found[pid] = conn
        if len(found) == len(pids):
            break
    for conn in spare:
        conn.close()
    return found


def _wait_for(check: object, bound: float) -> float:
    start = time.monotonic()
    while True:
        if check():  # type: ignore[operator]
            return time.monotonic() - start
        assert time.monotonic() - start < bound + 5, "never honoured"
        time.sleep(0.01)


def _check_propagation(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Both PIDs serve; disable and revoke through one worker are refused by the other."""
    pids = _children(proc.pid)
    assert len(pids) == 2
    conns = _one_connection_per_worker(port, pids)
    assert sorted(conns) == sorted(pids)  # both PIDs serve requests
    admin = KEY_RE.findall(log.read_text())
    assert len(admin) == 1  # printed once, by the parent, not once per worker
    a, b = conns[pids[0]], conns[pids[1]]

    status, body = _request(
        a, "POST", "/api/v1/api-keys", admin[0], {"name": "client", "scopes": ["mcp"]}
    )
    assert status == 201, body
    mcp_key, mcp_id = json.loads(body)["key"], json.loads(body)["id"]
    status, body = _request(
        a,
        "POST",
        "/api/v1/virtual-keys",
        admin[0],
        {
            "slug": "wrk",
            "name": "wrk",
            "upstreamUrl": "http://127.0.0.1:9/mcp",
            "authType": "bearer",
            "credential": "workers-canary-Qm2",
        },
    )
    assert status == 201, body
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    # Worker b caches the key and the connection (the upstream is closed: 502).
    assert _request(b, "POST", "/v1/mcp/wrk", mcp_key, call)[0] == 502

    status, _ = _request(a, "POST", "/api/v1/virtual-keys/wrk/disable", admin[0])
    assert status == 200
    took = _wait_for(lambda: _request(b, "POST", "/v1/mcp/wrk", mcp_key, call)[0] == 403, BOUND)
    assert took < BOUND

    assert _request(a, "DELETE", f"/api/v1/api-keys/{mcp_id}", admin[0])[0] == 204
    took = _wait_for(lambda: _request(b, "POST", "/v1/mcp/wrk", mcp_key, call)[0] == 401, BOUND)
    assert took < BOUND
    assert "workers-canary-Qm2" not in log.read_text()


def test_two_workers_share_the_port_and_honour_each_others_changes(tmp_path: Path) -> None:
    """Both worker PIDs serve; a key revoked and a connection disabled through one worker
    are refused by the other within the stated bound (far below the cache TTL); one admin key."""
    home = tmp_path / "data"
    with _serve_workers(home, 2, "--cache-ttl", "60") as (port, proc, log):
        _check_propagation(port, proc, log)
        # Without a shared rate-limit store, serve says the limits count per worker.
        assert "count per worker" in log.read_text()
        assert "dashboard sign-in sessions live in one worker" in log.read_text()


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A database on a throwaway Postgres cluster for this module."""
    pg_testing = pytest.importorskip("igris_mw_postgres.testing")
    if pg_testing.find_bindir() is None:
        message = "no PostgreSQL server binaries (initdb, pg_ctl)"
        if os.environ.get("IGRIS_TEST_REQUIRE_BACKENDS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with pg_testing.TempCluster() as cluster:
        yield pg_testing.create_database(cluster.dsn)


def test_two_workers_on_postgres_honour_each_others_changes(tmp_path: Path, pg_dsn: str) -> None:
    """The same on a Postgres store: each worker LISTENs, so a change through one is
    refused by the other well within the bound; the admin key is printed once."""
    master = base64.b64encode(os.urandom(32)).decode()
    env = {"IGRIS_STORE": pg_dsn, "IGRIS_MASTER_KEY": master}
    with _serve_workers(tmp_path / "data", 2, "--cache-ttl", "60", env_extra=env) as (
        port, proc, log,
    ):  # fmt: skip
        _check_propagation(port, proc, log)


def test_two_workers_audit_one_connection_into_one_linear_chain(tmp_path: Path) -> None:
    """Requests through two workers at once, all to one connection: every event is
    stored, `igris-mw audit verify` finds one unbroken chain, and the one metrics
    listener counts the requests of both workers."""
    home = tmp_path / "data"
    metrics_port = _free_port()
    with _serve_workers(home, 2, "--metrics-port", str(metrics_port)) as (port, proc, log):
        pids = _children(proc.pid)
        conns = _one_connection_per_worker(port, pids)
        admin = KEY_RE.findall(log.read_text())[0]
        a = conns[pids[0]]
        status, body = _request(
            a,
            "POST",
            "/api/v1/virtual-keys",
            admin,
            {
                "slug": "chain",
                "name": "chain",
                "upstreamUrl": "http://127.0.0.1:9/mcp",
                "authType": "bearer",
                "credential": "x",
            },
        )
        assert status == 201, body
        status, body = _request(
            a, "POST", "/api/v1/api-keys", admin, {"name": "c", "scopes": ["mcp"]}
        )
        key = json.loads(body)["key"]
        per_worker = 150
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}

        def drive(conn: http.client.HTTPConnection) -> int:
            return sum(
                _request(conn, "POST", "/v1/mcp/chain", key, call)[0] == 502
                for _ in range(per_worker)
            )

        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(drive, conns.values()))
        assert done == [per_worker, per_worker]
        scrape = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
        scrape.request("GET", "/metrics")
        text = scrape.getresponse().read().decode()
        scrape.close()
        counted = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("igris_gateway_requests_total{") and 'connection="chain"' in line
        )
        assert counted == 2 * per_worker, text
    # serve has stopped: every queued event is written.
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(home)
    verify = subprocess.run(
        [sys.executable, "-m", "igris_mw.cli", "audit", "verify", "chain", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    async def count() -> int:
        store = SQLiteStore(home / "igris.db")
        await store.open()
        try:
            return len(await store.audit_chain("chain", limit=10_000))
        finally:
            await store.close()

    assert asyncio.run(count()) == 2 * per_worker + 1  # + the connection's creation


async def test_sqlite_write_by_another_object_reaches_listeners_precisely(tmp_path: Path) -> None:
    """A peer's connection and key writes reach this store's listeners as precise changes,
    within a few poll intervals; audit appends and this store's own writes add none."""
    store, peer = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    await store.open()
    await peer.open()
    heard: list[Change] = []
    store.add_listener(heard.append)
    try:
        await store.create_connection(make_connection("own"))
        assert heard == [Change("connection", "own")]
        await peer.append_audit_events([make_event("own") for _ in range(5)])
        await peer.create_connection(make_connection("theirs"))
        start = time.monotonic()
        while Change("connection", "theirs") not in heard:
            assert time.monotonic() - start < BOUND
            await asyncio.sleep(0.01)
        await asyncio.sleep(3 * CHANGE_POLL)
        assert heard == [Change("connection", "own"), Change("connection", "theirs")]
    finally:
        await store.close()
        await peer.close()


async def test_sqlite_poller_that_fell_behind_the_pruned_log_hears_all(tmp_path: Path) -> None:
    """When the change log was pruned past what a store had read, it hears Change("all")."""
    store, peer = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    await store.open()
    await peer.open()
    heard: list[Change] = []
    store.add_listener(heard.append)
    try:
        # Stand in for 1000 missed writes: three logged changes, the first two
        # pruned, in one transaction this store's poller cannot see halfway.
        def forge(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            for key in "abc":
                db.execute(
                    "INSERT INTO igris_changes (origin, kind, key) VALUES ('x', 'connection', ?)",
                    (key,),
                )
            db.execute("DELETE FROM igris_changes WHERE key IN ('a', 'b')")
            db.execute("COMMIT")

        await peer._run(forge)
        start = time.monotonic()
        while not heard:
            assert time.monotonic() - start < BOUND
            await asyncio.sleep(0.01)
        assert heard[0] == Change("all")
    finally:
        await store.close()
        await peer.close()


def test_a_dead_worker_is_replaced_and_sigterm_stops_every_worker(tmp_path: Path) -> None:
    """A worker killed while serving is replaced (the port keeps answering); SIGTERM to
    the parent stops all workers and the parent exits 0."""
    home = tmp_path / "data"
    with _serve_workers(home, 2) as (port, proc, log):
        first = _children(proc.pid)
        time.sleep(1.2)  # past the start-up window in which a death stops the server
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            now = _children(proc.pid)
            if len(now) == 2 and first[0] not in now:
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        while not _healthy(port):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert f"worker {first[0]} exited" in log.read_text()
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    # The parent reaped them before exiting.
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []


async def test_sqlite_every_write_through_a_peer_reaches_listeners(tmp_path: Path) -> None:
    """Each kind of connection and key write made through another store object is heard,
    as the precise change, by this one: none is left to the cache TTL."""
    store, peer = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    await store.open()
    await peer.open()
    heard: list[Change] = []
    store.add_listener(heard.append)

    async def expect(change: Change) -> None:
        start = time.monotonic()
        while change not in heard:
            assert time.monotonic() - start < BOUND, (change, heard)
            await asyncio.sleep(0.01)
        heard.clear()

    try:
        created = await peer.create_connection(make_connection("every"))
        await expect(Change("connection", "every"))
        await peer.update_connection(
            attrs.evolve(created, name="renamed"), expected_version=created.version
        )
        await expect(Change("connection", "every"))
        await peer.delete_connection("every")
        await expect(Change("connection", "every"))
        key = await peer.create_api_key(make_api_key("key_every"))
        await expect(Change("api_key", "key_every"))
        await peer.update_api_key(attrs.evolve(key, name="renamed"))
        await expect(Change("api_key", "key_every"))
        await peer.revoke_api_key("key_every", at=datetime.now(UTC))
        await expect(Change("api_key", "key_every"))
    finally:
        await store.close()
        await peer.close()
