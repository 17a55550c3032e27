"""Contract, second part: audit additions (global trail, changes, hostile input, verify)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract_harness import ScriptedUpstream, Served, error_of, serve

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}


def _trail(gw: Served, slug: str, n: int = 1, **params: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        r = gw.api("GET", f"/api/v1/virtual-keys/{slug}/audit", params={"limit": 200, **params})
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        if len(data) >= n or time.monotonic() > deadline:
            return data
        time.sleep(0.1)


def test_management_events_carry_changes(gw: Served) -> None:
    """PATCH events carry changes {field: {from, to}}; a rotate shows only credentialVersion."""
    c = gw.create_connection(None, upstreamUrl="https://a.example/mcp")
    path = f"/api/v1/virtual-keys/{c['slug']}"
    gw.api("PATCH", path, json={"name": "New name", "upstreamUrl": "https://b.example/mcp"})
    gw.api("POST", path + "/rotate", json={"credential": "rotate-canary-00x"})
    gw.api("POST", path + "/disable")
    events = _trail(gw, c["slug"], 4)
    by_change = [e for e in events if e.get("changes")]
    patch = next(e for e in by_change if "name" in e["changes"])
    assert patch["changes"]["name"] == {"from": "contract", "to": "New name"}
    assert patch["changes"]["upstreamUrl"] == {
        "from": "https://a.example/mcp",
        "to": "https://b.example/mcp",
    }
    rotate = next(e for e in by_change if "credentialVersion" in e["changes"])
    assert set(rotate["changes"]) == {"credentialVersion"}
    assert rotate["changes"]["credentialVersion"] == {"from": 1, "to": 2}
    disable = next(e for e in by_change if "enabled" in e["changes"])
    assert disable["changes"]["enabled"] == {"from": True, "to": False}
    assert "rotate-canary-00x" not in json.dumps(events)


def test_global_audit_trail(gw: Served) -> None:
    """GET /api/v1/audit: every event newest first; key events have connection null; filters."""
    c = gw.create_connection(None)
    key, kid = gw.mcp_key()
    gw.api("PATCH", f"/api/v1/api-keys/{kid}", json={"name": "renamed"})
    gw.api("DELETE", f"/api/v1/api-keys/{kid}")
    r = gw.api("GET", "/api/v1/audit")
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"data", "nextCursor"}
    data = r.json()["data"]
    # overlapping gateway requests of other tests are ordered by another test
    stamps = [e["timestamp"] for e in data if e.get("kind") != "gateway"]
    assert stamps == sorted(stamps, reverse=True)
    assert c["slug"] in {e["connection"] for e in data}
    key_events = [e for e in data if e["connection"] is None]
    assert len(key_events) >= 3
    assert key not in r.text
    only = gw.api("GET", "/api/v1/audit", params={"slug": c["slug"]}).json()["data"]
    assert only
    assert all(e["connection"] == c["slug"] for e in only)
    page = gw.api("GET", "/api/v1/audit", params={"limit": 1}).json()
    assert len(page["data"]) == 1
    assert page["nextCursor"]
    for params in (
        {"kind": "management"},
        {"action": "create"},
        {"outcome": "ok"},
        {"user": "nobody"},
        {"since": "2020-01-01T00:00:00Z"},
    ):
        assert gw.api("GET", "/api/v1/audit", params=params).status_code == 200, params
    error_of(gw.api("GET", "/api/v1/audit", params={"since": "soon"}), 422)
    mcp, _ = gw.mcp_key()
    error_of(gw.api("GET", "/api/v1/audit", key=mcp), 403)
    error_of(httpx.get(gw.url + "/api/v1/audit"), 401)


def test_api_key_changes_in_global_trail(gw: Served) -> None:
    """An API-key patch event carries changes for name, connections, rateLimit, expiresAt."""
    c = gw.create_connection(None)
    _, kid = gw.mcp_key()
    gw.api(
        "PATCH", f"/api/v1/api-keys/{kid}", json={"name": "renamed-key", "connections": [c["slug"]]}
    )
    data = gw.api("GET", "/api/v1/audit", params={"limit": 50}).json()["data"]
    patch = next(e for e in data if e.get("changes", {}).get("name", {}).get("to") == "renamed-key")
    assert patch["connection"] is None
    assert patch["changes"]["connections"]["to"] == [c["slug"]]


def test_hostile_input_is_stored_escaped_and_truncated(
    gw: Served, scripted: ScriptedUpstream
) -> None:
    """Huge path, user and metadata are stored truncated; events after them are not blocked."""
    c = gw.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
    long_path = "/p" + "%00x" * 2000
    meta = json.dumps({"k": "v" * 8000, "s": "\ud800"})
    headers = gw.h(**{"X-Igris-User": "u" * 250})
    httpx.post(c["gatewayUrl"] + long_path, headers=headers, json=PING, timeout=10)
    httpx.post(c["gatewayUrl"], headers=gw.h(**{"X-Igris-Metadata": meta}), json=PING)
    httpx.post(c["gatewayUrl"], headers=gw.h(**{"X-Igris-User": "after"}), json=PING)
    events = [e for e in _trail(gw, c["slug"], 3) if e.get("method")]
    assert len(events) == 3
    assert any(e["user"] == "after" for e in events)
    for e in events:
        assert len(e["path"].encode()) <= 2048
        assert len(json.dumps(e["metadata"], separators=(",", ":")).encode()) <= 4096 + 64


def test_rpc_method_is_null_when_not_parsed(gw: Served, scripted: ScriptedUpstream) -> None:
    """A body that is not JSON-RPC (or a GET) leaves rpcMethod and tool null."""
    c = gw.create_connection(None, upstreamUrl=scripted.base_url + "/echo")
    httpx.post(
        c["gatewayUrl"],
        headers=gw.h(**{"Content-Type": "application/json"}),
        content=b'{"method": "tools/call", "params": {"name": "x"',
        timeout=10,
    )
    httpx.get(c["gatewayUrl"], headers=gw.h(), timeout=10)
    events = [e for e in _trail(gw, c["slug"], 3) if e.get("method")]
    assert len(events) == 2
    for e in events:
        assert e["rpcMethod"] is None
        assert e["tool"] is None


def _chain_home(tmp_path: Path, gw: Served) -> tuple[Path, str]:
    """A copy of the module's store with one connection's trail of several events."""
    c = gw.create_connection(None)
    for _ in range(3):
        gw.api("POST", f"/api/v1/virtual-keys/{c['slug']}/disable")
        gw.api("POST", f"/api/v1/virtual-keys/{c['slug']}/enable")
    _trail(gw, c["slug"], 7)
    home = tmp_path / "copy"
    shutil.copytree(gw.home, home)
    for extra in ("igris.db-wal", "igris.db-shm"):
        (home / extra).unlink(missing_ok=True)
    src = sqlite3.connect(gw.home / "igris.db")
    dst = sqlite3.connect(home / "igris.db")
    src.backup(dst)
    src.close()
    dst.close()
    return home, c["slug"]


def _verify(gw: Served, home: Path, *args: str) -> int:
    import subprocess

    from contract_harness import clean_env, igris_command

    p = subprocess.run(
        [*igris_command(), "audit", "verify", *args],
        env=clean_env(home, {"IGRIS_MASTER_KEY": None}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in p.stderr
    return p.returncode


def _edit(home: Path, sql: str, *params: Any) -> None:
    db = sqlite3.connect(home / "igris.db")
    db.execute(sql, params)
    db.commit()
    db.close()


@pytest.mark.parametrize("tamper", ["edit", "remove", "reorder", "cut_end"])
def test_audit_verify_detects_tampering(gw: Served, tmp_path: Path, tamper: str) -> None:
    """audit verify fails on an event edited, removed, reordered, or cut from the end."""
    home, slug = _chain_home(tmp_path, gw)
    assert _verify(gw, home) == 0
    db = sqlite3.connect(home / "igris.db")
    rows = db.execute(
        "SELECT seq, body FROM audit_events WHERE connection = ? ORDER BY seq", (slug,)
    ).fetchall()
    db.close()
    assert len(rows) >= 5
    if tamper == "edit":
        body = json.loads(rows[2][1])
        body["action"] = "delete" if body.get("action") != "delete" else "create"
        _edit(
            home,
            "UPDATE audit_events SET body = ? WHERE connection = ? AND seq = ?",
            json.dumps(body),
            slug,
            rows[2][0],
        )
    elif tamper == "remove":
        _edit(home, "DELETE FROM audit_events WHERE connection = ? AND seq = ?", slug, rows[2][0])
    elif tamper == "reorder":
        _edit(
            home,
            "UPDATE audit_events SET body = CASE seq WHEN ? THEN ? ELSE ? END "
            "WHERE connection = ? AND seq IN (?, ?)",
            rows[1][0],
            rows[2][1],
            rows[1][1],
            slug,
            rows[1][0],
            rows[2][0],
        )
    else:
        _edit(home, "DELETE FROM audit_events WHERE connection = ? AND seq = ?", slug, rows[-1][0])
    assert _verify(gw, home, slug) != 0
    assert _verify(gw, home) != 0


def test_audit_verify_detects_a_chain_removed_whole(gw: Served, tmp_path: Path) -> None:
    """Removing every event of one connection is detected by audit verify."""
    home, slug = _chain_home(tmp_path, gw)
    _edit(home, "DELETE FROM audit_events WHERE connection = ?", slug)
    assert _verify(gw, home) != 0


def test_cli_audit_without_slug_lists_the_global_trail(gw: Served) -> None:
    """`igris-mw audit` with no SLUG lists every event."""
    c = gw.create_connection(None)
    p = gw.cli("audit", "--json")
    assert p.returncode == 0, p.stderr
    assert c["slug"] in p.stdout


def test_audit_failure_flag(gw: Served) -> None:
    """serve takes --audit-failure closed|open; another value is a one-line error."""
    out = gw.cli("serve", "--help").stdout
    assert "--audit-failure" in out
    p = gw.cli("serve", "--audit-failure", "sometimes", "--port", "1")
    assert p.returncode != 0
    assert "Traceback" not in p.stderr


def test_shutdown_timeout_bounds_shutdown(
    tmp_path_factory: pytest.TempPathFactory, scripted: ScriptedUpstream
) -> None:
    """With a stream open, SIGTERM ends serve within --shutdown-timeout (plus start-up slack)."""
    home = tmp_path_factory.mktemp("contract-shutdown") / "home"
    with serve(home, "--shutdown-timeout", "2") as s:
        c = s.create_connection(None, upstreamUrl=scripted.base_url + "/idle")
        with httpx.stream("GET", c["gatewayUrl"], headers=s.h(), timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_raw())
            started = time.monotonic()
            s.proc.terminate()
            s.proc.wait(15)
        assert time.monotonic() - started < 6
