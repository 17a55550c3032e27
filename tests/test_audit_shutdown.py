"""`igris-mw serve` shuts down within its bound while the audit sink takes nothing.

A real process, a real sink failure: the audit goes to a JSON-lines file
that another process (this test) keeps locked, so every append fails. On
SIGTERM the process must exit within ``--shutdown-timeout`` (default 10 s)
and every audit event it could not write must be in the spill file; the
next start writes them to the sink.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")
# Process exit on a loaded 2-core machine: the bound plus this much.
_EXIT_SLACK = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(home: Path, audit: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(home)
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = "127.0.0.0/8"  # the test upstream is on loopback
    log = home.parent / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port),
             "--audit", f"jsonl://{audit}", *extra],
            env=env, cwd=home.parent, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


@contextmanager
def _serve(
    home: Path, audit: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    proc, url, log = _start(home, audit, *extra)
    try:
        yield proc, url, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock the JSON-lines sink takes for every append."""
    with path.open("ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _connection(url: str, admin: str) -> None:
    # Nothing listens on port 9: each gateway request is a 502, and audited.
    r = httpx.post(
        url + "/api/v1/virtual-keys",
        headers={"Authorization": f"Bearer {admin}"},
        json={"slug": "downstream", "name": "d", "upstreamUrl": "http://127.0.0.1:9/mcp",
              "credential": "secret-token-canary"},
    )  # fmt: skip
    assert r.status_code == 201, r.text


def _gateway_requests(url: str, admin: str, users: list[str]) -> None:
    for user in users:
        r = httpx.post(
            url + "/v1/mcp/downstream",
            headers={"Authorization": f"Bearer {admin}", "X-Igris-User": user},
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        )
        assert r.status_code == 502, r.text


def _users_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    found = set()
    for line in path.read_text().splitlines():
        if line.strip():
            user = json.loads(line).get("user")
            if user:
                found.add(user)
    return found


def _terminate(proc: subprocess.Popen[bytes], log: Path, wait: float) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        tail = log.read_text()[-3000:]
        raise AssertionError(f"no exit {wait:.0f}s after SIGTERM\n{tail}") from None
    return time.monotonic() - started


def _stalled_request(url: str, admin: str) -> socket.socket:
    """A request whose body never ends: it stays open until the server gives up on it."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/mcp/downstream HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {admin}\r\n".encode()
        + b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"jsonrpc":'
    )
    time.sleep(0.3)
    return sock


def test_sigterm_with_a_refusing_sink_and_an_open_request_exits_within_10s(tmp_path: Path) -> None:
    """SIGTERM, sink taking nothing, a request open: exit within 10 s, every event spilled."""
    home, audit = tmp_path / "data", tmp_path / "audit" / "audit.jsonl"
    users = [f"user-{i}" for i in range(20)]
    with _serve(home, audit) as (proc, url, log):
        admin = KEY_RE.findall(log.read_text())[0]
        _connection(url, admin)
        with _locked(audit):
            _gateway_requests(url, admin, users)
            sock = _stalled_request(url, admin)
            try:
                elapsed = _terminate(proc, log, wait=40)
            finally:
                sock.close()
            assert elapsed < 10 + _EXIT_SLACK, f"shutdown took {elapsed:.1f}s\n{log.read_text()}"
    spill = home / "audit-spill.jsonl"
    assert set(users) <= _users_in(spill), log.read_text()
    assert _users_in(audit).isdisjoint(users)
    assert "secret-token-canary" not in spill.read_text()

    # No event is lost: the next start writes the spilled events to the sink.
    with _serve(home, audit) as (proc, url, log):
        deadline = time.monotonic() + 15
        while not set(users) <= _users_in(audit):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        _terminate(proc, log, wait=20)
    lines = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()]
    ids = [e["id"] for e in lines]
    assert len(ids) == len(set(ids))  # each event stored once
    assert not spill.exists()


def test_shutdown_timeout_option_bounds_the_audit_flush(tmp_path: Path) -> None:
    """`serve --shutdown-timeout 2` with a refusing sink: exit within 2 s, every event spilled."""
    home, audit = tmp_path / "data", tmp_path / "audit" / "audit.jsonl"
    users = [f"short-{i}" for i in range(10)]
    with _serve(home, audit, "--shutdown-timeout", "2") as (proc, url, log):
        admin = KEY_RE.findall(log.read_text())[0]
        _connection(url, admin)
        with _locked(audit):
            _gateway_requests(url, admin, users)
            elapsed = _terminate(proc, log, wait=30)
    assert elapsed < 2 + _EXIT_SLACK, f"shutdown took {elapsed:.1f}s\n{log.read_text()}"
    assert set(users) <= _users_in(home / "audit-spill.jsonl"), log.read_text()
