"""Tests for igris_mw._serve: `igris-mw serve` as a real process."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve(home: Path) -> Iterator[tuple[str, list[str]]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(home)
    log = home.parent / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port)],
            env=env,
            cwd=home.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, [log.read_text()]
    finally:
        proc.terminate()
        proc.wait(10)


def test_first_start_creates_store_and_key_and_prints_an_admin_key_once(tmp_path: Path) -> None:
    """With no configuration: 0600 master key and store, a one-time admin key, /healthz."""
    home = tmp_path / "data"
    with _serve(home) as (url, output):
        keys = KEY_RE.findall(output[0])
        assert len(keys) == 1
        admin = keys[0]
        r = httpx.get(url + "/api/v1/virtual-keys", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
        assert r.json() == {"data": [], "nextCursor": None}
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert stat.S_IMODE((home / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "igris.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700

    with _serve(home) as (url, output):
        assert KEY_RE.findall(output[0]) == []  # shown once only
        r = httpx.get(url + "/api/v1/api-keys", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
        assert admin not in r.text
