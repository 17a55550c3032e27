"""igris-mw audit without SLUG (the whole trail, --follow too) and audit verify's cases."""

from __future__ import annotations

import _thread
import asyncio
import io
import json
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from igris_mw import cli
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.testing import FixedKeyring

CRED = "cli-audit-canary-Q7w2"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("IGRIS_STORE", "IGRIS_CRYPTO", "IGRIS_MASTER_KEY", "IGRIS_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IGRIS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IGRIS_MASTER_KEY", FixedKeyring.environ()["IGRIS_MASTER_KEY"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    (tmp_path / "cred.txt").write_text(CRED + "\n")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert CRED not in out + err
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def create(capsys: pytest.CaptureFixture[str], slug: str) -> None:
    run_json(
        capsys, "connections", "create", "--slug", slug, "--name", slug,
        "--upstream-url", "https://mcp.example/mcp", "--credential-file", "cred.txt",
    )  # fmt: skip


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "home" / "igris.db", isolation_level=None)


def test_audit_without_slug_lists_every_chain(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`audit` with no SLUG lists every event, API-key ones (connection null) too, filterable."""
    create(capsys, "conn-a")
    issued = run_json(capsys, "api-keys", "create", "--name", "robot", "--scope", "mcp")
    run_json(capsys, "api-keys", "revoke", issued["id"])
    data = run_json(capsys, "audit")["data"]
    assert [(e["connection"], e["action"]) for e in data] == [
        (None, "revoke"), (None, "create"), ("conn-a", "create"),
    ]  # fmt: skip
    assert issued["key"] not in json.dumps(data)
    only = run_json(capsys, "audit", "--action", "revoke")["data"]
    assert [e["action"] for e in only] == ["revoke"]
    assert [e["connection"] for e in run_json(capsys, "audit", "--slug", "conn-a")["data"]] == [
        "conn-a"
    ]
    code, out, _ = run(capsys, "audit")
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["CONNECTION", "TIME"]
    code, _, err = run(capsys, "audit", "--outcome", "Not A Word")
    assert code != 0
    assert "outcome" in err


def test_audit_follow_without_slug_prints_every_chain(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit --follow` with no SLUG prints new events of any chain, the global one too."""
    create(capsys, "conn-a")
    monkeypatch.setattr(cli.commands, "FOLLOW_INTERVAL", 0.02)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            time.sleep(0.5)

            async def change() -> None:
                store = SQLiteStore(home / "home" / "igris.db")
                await store.open()
                try:
                    svc = Service(store, FixedKeyring())
                    await svc.set_enabled("conn-a", False)
                    await svc.create_api_key({"name": "late", "scopes": ["mcp"]})
                finally:
                    await store.close()

            asyncio.run(change())
            time.sleep(0.5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            _thread.interrupt_main()

    thread = threading.Thread(target=writer)
    thread.start()
    code, out, _ = run(capsys, "audit", "--follow", "--json")
    thread.join()
    assert not errors
    assert code == 130
    seen = [(e["connection"], e["action"]) for e in map(json.loads, out.splitlines())]
    assert seen == [("conn-a", "create"), ("conn-a", "disable"), (None, "create")]


def _follow_with(
    capsys: pytest.CaptureFixture[str], home: Path, monkeypatch: pytest.MonkeyPatch,
    changes: Any, *argv: str,
) -> list[tuple[Any, Any]]:  # fmt: skip
    """Run `audit --follow --json *argv` while ``changes(svc)`` runs once the
    backlog is read; the (connection, action) of every printed event."""
    monkeypatch.setattr(cli.commands, "FOLLOW_INTERVAL", 0.02)
    original = cli.audit_trail.list_all

    async def list_all_then_change(args: Any, svc: Service) -> Any:
        page = await original(args, svc)
        await changes(svc)  # lands after the backlog was read
        return page

    monkeypatch.setattr(cli.audit_trail, "list_all", list_all_then_change)
    threading.Timer(1.0, _thread.interrupt_main).start()
    code, out, _ = run(capsys, "audit", "--follow", "--json", *argv)
    assert code == 130
    return [(e["connection"], e["action"]) for e in map(json.loads, out.splitlines())]


def test_audit_follow_prints_an_event_landing_as_it_starts_once(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event written between the backlog and the first poll is printed, once."""
    create(capsys, "conn-a")

    async def disable(svc: Service) -> None:
        await svc.set_enabled("conn-a", False)

    seen = _follow_with(capsys, home, monkeypatch, disable)
    assert seen == [("conn-a", "create"), ("conn-a", "disable")]


def test_audit_follow_applies_the_filters_to_new_events(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit --follow --action disable` prints new disables only; `--slug` one chain only."""
    create(capsys, "conn-a")
    create(capsys, "conn-b")

    async def changes(svc: Service) -> None:
        await svc.set_enabled("conn-a", False)
        await svc.set_enabled("conn-b", False)
        await svc.set_enabled("conn-a", True)
        await svc.create_api_key({"name": "late", "scopes": ["mcp"]})

    seen = _follow_with(capsys, home, monkeypatch, changes, "--action", "disable")
    assert seen == [("conn-a", "disable"), ("conn-b", "disable")]

    async def more(svc: Service) -> None:
        await svc.set_enabled("conn-a", False)
        await svc.set_enabled("conn-b", True)

    seen = _follow_with(capsys, home, monkeypatch, more, "--slug", "conn-b")
    assert seen == [("conn-b", "create"), ("conn-b", "disable"), ("conn-b", "enable")]


def test_audit_verify_names_each_case(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify tells a cut-off end, a chain removed whole and a forged head apart."""
    for slug in ("conn-a", "conn-b", "conn-c"):
        create(capsys, slug)
        run_json(capsys, "connections", "disable", slug)
    assert run(capsys, "audit", "verify")[:2] == (0, "ok\n")
    with db(home) as conn:
        conn.execute("DELETE FROM audit_events WHERE connection = 'conn-a' AND seq = 2")
        conn.execute("DELETE FROM audit_events WHERE connection = 'conn-b'")
    code, out, err = run(capsys, "audit", "verify")
    assert code == 1
    assert "conn-a: the last 1 event(s) of chain 'conn-a' were removed" in out
    assert "conn-b: chain 'conn-b' was removed whole" in out
    assert "conn-c" not in out
    assert "2 audit chain(s) failed verification" in err
    with db(home) as conn:
        conn.execute("DELETE FROM audit_heads WHERE chain = 'conn-b'")
    code, out, _ = run(capsys, "audit", "verify")
    assert "(heads): 1 chain(s) were removed whole together with their signed heads" in out
    report = run_json_fail(capsys, "audit", "verify")
    assert report["ok"] is False
    assert report["connections"]["conn-c"] == []


def run_json_fail(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 1
    return json.loads(out)
