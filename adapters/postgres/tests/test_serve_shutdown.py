"""`igris-mw serve` on Postgres stops within its bound while the server does not answer."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from igris_mw_postgres.testing import TempCluster, create_database

from igris_mw.testing import FixedKeyring

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_pids(cluster: TempCluster) -> list[int]:
    postmaster = int((cluster.directory / "data" / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
    ).stdout.split()
    return [postmaster, *(int(c) for c in children)]


def test_sigterm_while_postgres_is_frozen_exits_within_10s_with_events_spilled(
    private_cluster: TempCluster, tmp_path: Path
) -> None:
    """SIGTERM while the Postgres server (store and audit sink) is frozen: exit within
    10 s, and the events it could not take are in the spill file."""
    dsn = create_database(private_cluster.dsn)
    home = tmp_path / "data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env.update({"IGRIS_HOME": str(home), **FixedKeyring.environ()})
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = "127.0.0.0/8"  # the test upstream is on loopback
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port), "--store", dsn],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    frozen: list[int] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {KEY_RE.findall(log.read_text())[0]}"}
        r = httpx.post(
            url + "/api/v1/virtual-keys",
            headers=headers,
            json={"slug": "frozen", "name": "f", "upstreamUrl": "http://127.0.0.1:9/mcp",
                  "credential": "pg-canary-token"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        # Warm the caches: later requests need no store read, only the audit does.
        for _ in range(3):
            assert httpx.post(url + "/v1/mcp/frozen", headers=headers, content=b"{}").status_code
        time.sleep(0.5)
        frozen = _server_pids(private_cluster)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        users = [f"frozen-{i}" for i in range(5)]
        for user in users:
            r = httpx.post(
                url + "/v1/mcp/frozen",
                headers={**headers, "X-Igris-User": user},
                content=b"{}",
                timeout=5,
            )
            assert r.status_code == 502, r.text
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError(log.read_text()[-3000:]) from None
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert elapsed < 11, f"shutdown took {elapsed:.1f}s\n{log.read_text()[-3000:]}"
    spill = home / "audit-spill.jsonl"
    spilled = [json.loads(line) for line in spill.read_text().splitlines() if line.strip()]
    assert set(users) <= {e["user"] for e in spilled}, log.read_text()
    assert "pg-canary-token" not in spill.read_text()
