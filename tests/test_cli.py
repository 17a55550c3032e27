"""The igris-mw command: every command against a real SQLite store."""

from __future__ import annotations

import _thread
import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from igris_mw import _auth, cli
from igris_mw._keyring import Keyring
from igris_mw._service import Service
from igris_mw._sqlite import SQLiteStore
from igris_mw.testing import FixedKeyring

CRED = "cli-canary-7Hq2xV9w"
CRED2 = "cli-canary-rotated-Lm3k"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("IGRIS_STORE", "IGRIS_CRYPTO", "IGRIS_MASTER_KEY", "IGRIS_MASTER_KEY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IGRIS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("IGRIS_MASTER_KEY", FixedKeyring.environ()["IGRIS_MASTER_KEY"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    (tmp_path / "cred.txt").write_text(CRED + "\n")
    (tmp_path / "cred2.txt").write_text(CRED2 + "\n")
    return tmp_path


class Run:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.outputs: list[str] = []

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = self.capsys.readouterr()
        self.outputs += [out, err]
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def assert_no_credential(self) -> None:
        for text in self.outputs:
            assert CRED not in text
            assert CRED2 not in text


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


def db_path(home: Path) -> Path:
    return home / "home" / "igris.db"


def dump(home: Path) -> list[str]:
    path = db_path(home)
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return list(db.iterdump())


def open_credential(url: str, slug: str, keyring: Keyring | None = None) -> bytes | None:
    async def go() -> bytes | None:
        store = SQLiteStore.from_url(url)
        await store.open()
        try:
            svc = Service(store, keyring or FixedKeyring())
            secret = await svc.open_credential(await svc.get_connection(slug))
            return None if secret is None else secret.reveal()
        finally:
            await store.close()

    return asyncio.run(go())


def create_args(slug: str = "gh-prod", *extra: str) -> list[str]:
    return [
        "connections",
        "create",
        "--slug",
        slug,
        "--name",
        "GitHub",
        "--upstream-url",
        "https://mcp.example/mcp",
        *extra,
    ]


def default_url(home: Path) -> str:
    return f"sqlite:///{db_path(home)}"


# -- API keys ---------------------------------------------------------------


def test_api_key_create_json_prints_key_once(home: Path, run: Run) -> None:
    """--json prints an object whose key field holds a well-formed key; list never shows it."""
    created = run.json("api-keys", "create", "--name", "admin", "--scope", "admin")
    key = created["key"]
    assert _auth.is_well_formed(key)
    assert created["scopes"] == ["admin"]
    assert created["id"].startswith("key_")
    listed = run.json("api-keys", "list")
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    code, out, _ = run("api-keys", "list")
    assert code == 0
    assert created["id"] in out
    assert key not in json.dumps(listed)
    assert key not in out
    with sqlite3.connect(db_path(home)) as db:
        raw = "\n".join(db.iterdump())
    assert key not in raw


def test_api_key_human_create_scoped_and_revoke(home: Path, run: Run) -> None:
    """A scoped mcp key prints its key once; revoke marks it revoked."""
    code, out, err = run(
        "api-keys",
        "create",
        "--name",
        "ci",
        "--scope",
        "mcp",
        "--connection",
        "gh-prod",
        "--expires-at",
        "2999-01-01T00:00:00Z",
    )
    assert code == 0
    assert "not shown again" in err
    keys = [w for w in out.split() if w.startswith("ig_")]
    assert len(keys) == 1
    assert _auth.is_well_formed(keys[0])
    key_id = next(w for w in out.split() if w.startswith("key_"))
    revoked = run.json("api-keys", "revoke", key_id)
    assert revoked["revokedAt"] is not None
    assert revoked["connections"] == ["gh-prod"]
    assert run.json("api-keys", "list")["data"][0]["revokedAt"] == revoked["revokedAt"]


# -- connections ------------------------------------------------------------


def test_create_reads_credential_file(home: Path, run: Run) -> None:
    """--credential-file is read with its one trailing newline dropped."""
    conn = run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))
    assert conn["slug"] == "gh-prod"
    assert conn["credentialVersion"] == 1
    assert open_credential(default_url(home), "gh-prod") == CRED.encode()
    run.assert_no_credential()


def test_create_reads_stdin(home: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --credential-file a piped standard input is the credential."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(CRED + "\n"))
    code, out, _ = run(*create_args("from-stdin", "--auth-type", "header", "--header-name", "X-K"))
    assert code == 0
    assert "from-stdin" in out
    assert open_credential(default_url(home), "from-stdin") == CRED.encode()
    run.assert_no_credential()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_create_prompts_on_terminal(home: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the credential is asked for with a hidden prompt."""
    monkeypatch.setattr(sys, "stdin", _Tty(""))
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return CRED

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert run(*create_args())[0] == 0
    assert len(prompts) == 1
    assert open_credential(default_url(home), "gh-prod") == CRED.encode()
    run.assert_no_credential()


def test_connection_lifecycle(home: Path, run: Run) -> None:
    """list, show, rotate, disable, enable and delete work and are audited."""
    run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))
    run.json(*create_args("open-one", "--auth-type", "none", "--disabled"))
    listed = run.json("connections", "list")
    assert [c["slug"] for c in listed["data"]] == ["gh-prod", "open-one"]
    assert listed["data"][1]["enabled"] is False
    code, out, _ = run("connections", "list")
    assert code == 0
    assert "gh-prod" in out
    assert "open-one" in out
    shown = run.json("connections", "show", "gh-prod")
    assert shown["upstreamUrl"] == "https://mcp.example/mcp"

    rotated = run.json("connections", "rotate", "gh-prod", "--credential-file", "cred2.txt")
    assert rotated["credentialVersion"] == 2
    assert rotated["rotatedAt"] is not None
    assert open_credential(default_url(home), "gh-prod") == CRED2.encode()

    assert run.json("connections", "disable", "gh-prod")["enabled"] is False
    assert run.json("connections", "enable", "gh-prod")["enabled"] is True
    updated = run.json("connections", "update", "gh-prod", "--upstream-url", "https://b.example/")
    assert updated["upstreamUrl"] == "https://b.example/"
    assert open_credential(default_url(home), "gh-prod") == CRED2.encode()
    assert run.json("connections", "delete", "open-one") == {"deleted": "open-one"}
    assert [c["slug"] for c in run.json("connections", "list")["data"]] == ["gh-prod"]

    audit = run.json("audit", "gh-prod")
    assert [e["action"] for e in audit["data"]] == [
        "update",
        "enable",
        "disable",
        "rotate",
        "create",
    ]
    assert all(e["kind"] == "management" for e in audit["data"])
    code, out, _ = run("audit", "gh-prod", "--limit", "2")
    assert code == 0
    assert "update" in out
    assert "create" not in out
    assert [e["action"] for e in run.json("audit", "open-one")["data"]] == ["delete", "create"]
    run.assert_no_credential()


def test_audit_verify_detects_tampering(home: Path, run: Run) -> None:
    """audit verify says ok, then exits 1 naming an edited or a removed event."""
    run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))
    run.json(*create_args("other", "--credential-file", "cred.txt"))
    for action in ("disable", "enable", "disable"):
        run.json("connections", action, "gh-prod")
        run.json("connections", action, "other")
    code, out, _ = run("audit", "verify")
    assert (code, out.strip()) == (0, "ok")

    with sqlite3.connect(db_path(home)) as db:
        (body,) = db.execute(
            "SELECT body FROM audit_events WHERE connection='gh-prod' AND seq=2"
        ).fetchone()
        event = json.loads(body)
        event["apiKeyId"] = "key_forged"
        db.execute(
            "UPDATE audit_events SET body=? WHERE connection='gh-prod' AND seq=2",
            (json.dumps(event, separators=(",", ":")),),
        )
    code, out, err = run("audit", "verify")
    assert code == 1
    assert "gh-prod" in out
    assert "seq 2" in out
    assert "other" not in out
    assert err.count("\n") == 1
    assert run("audit", "verify", "other")[0] == 0
    report = run.json("audit", "verify", "other")
    assert report == {"ok": True, "connections": {"other": []}}

    with sqlite3.connect(db_path(home)) as db:
        db.execute("DELETE FROM audit_events WHERE connection='other' AND seq=2")
    code, out, _ = run("audit", "verify", "other")
    assert code == 1
    assert "seq 2 is missing" in out


def test_audit_follow_prints_new_events_until_ctrl_c(
    home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--follow prints the backlog, then events appended later; Ctrl-C exits 130."""
    run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))
    monkeypatch.setattr(cli.commands, "FOLLOW_INTERVAL", 0.02)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            time.sleep(0.5)

            # Another process's write, through its own store object.
            async def disable() -> None:
                store = SQLiteStore.from_url(default_url(home))
                await store.open()
                try:
                    await Service(store, FixedKeyring()).set_enabled("gh-prod", False)
                finally:
                    await store.close()

            asyncio.run(disable())
            time.sleep(0.5)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            _thread.interrupt_main()

    thread = threading.Thread(target=writer)
    thread.start()
    code, out, _ = run("audit", "gh-prod", "--follow", "--json")
    thread.join()
    assert not errors
    assert code == 130
    actions = [json.loads(line)["action"] for line in out.splitlines()]
    assert actions == ["create", "disable"]


# -- bad input ----------------------------------------------------------------


BAD: list[tuple[list[str], dict[str, str | None], int, str]] = [
    (create_args("Bad Slug", "--credential-file", "cred2.txt"), {}, 1, "slug"),
    (create_args("gh-prod", "--credential-file", "cred2.txt"), {}, 1, "taken"),
    (
        create_args("hdr-one", "--auth-type", "header", "--credential-file", "cred2.txt"),
        {},
        1,
        "headerName",
    ),
    (create_args("new-one", "--credential-file", "missing.txt"), {}, 1, "missing.txt"),
    (create_args("new-one", "--credential-file", "twoline.txt"), {}, 1, "credential"),
    (["connections", "show", "missing"], {}, 1, "missing"),
    (["connections", "rotate", "missing", "--credential-file", "cred2.txt"], {}, 1, "missing"),
    (["connections", "disable", "missing"], {}, 1, "missing"),
    (["connections", "delete", "missing"], {}, 1, "missing"),
    (["audit", "missing"], {}, 1, "missing"),
    (["audit", "gh-prod", "--limit", "0"], {}, 1, "limit"),
    (["audit", "gh-prod", "--since", "yesterday"], {}, 1, "since"),
    (["api-keys", "revoke", "key_0000000000000000"], {}, 1, "key"),
    (
        ["api-keys", "create", "--name", "x", "--scope", "admin", "--connection", "gh-prod"],
        {},
        1,
        "connections",
    ),
    (
        create_args("new-one", "--credential-file", "cred2.txt"),
        {"IGRIS_MASTER_KEY": "not-base64!"},
        2,
        "IGRIS_MASTER_KEY",
    ),
    (
        create_args("new-one", "--credential-file", "cred2.txt"),
        {"IGRIS_MASTER_KEY": "c2hvcnQ="},
        2,
        "IGRIS_MASTER_KEY",
    ),
    (
        ["connections", "rotate", "gh-prod", "--credential-file", "cred2.txt"],
        {"IGRIS_MASTER_KEY": None, "IGRIS_MASTER_KEY_FILE": "/nonexistent/master.key"},
        2,
        "/nonexistent/master.key",
    ),
    (["connections", "list", "--store", "foo://bar"], {}, 2, "foo"),
    (["connections", "list"], {"IGRIS_STORE": "nope://x"}, 2, "nope"),
    (["connections", "list"], {"IGRIS_HOME": "cred.txt/home"}, 2, "data directory"),
    (["connections", "create", "--slug", "x"], {}, 2, "required"),
    (["connections", "frobnicate"], {}, 2, "frobnicate"),
]


@pytest.mark.parametrize(("argv", "env", "code", "fragment"), BAD)
def test_bad_input_one_line_and_store_unchanged(
    home: Path,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str | None],
    code: int,
    fragment: str,
) -> None:
    """Each bad input prints one error line, exits non-zero and changes nothing stored."""
    (home / "twoline.txt").write_text(CRED2 + "\nsecond line\n")
    run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))
    run.json("api-keys", "create", "--name", "admin", "--scope", "admin")
    before = dump(home)
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    got, out, err = run(*argv)
    assert got == code
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("igris-mw: error: ")
    assert fragment in err
    assert "Traceback" not in err
    assert dump(home) == before
    run.assert_no_credential()


def test_missing_master_key_says_how_to_fix(
    home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no master key anywhere, a command that needs one names every way to fix it."""
    monkeypatch.delenv("IGRIS_MASTER_KEY")
    code, _, err = run(*create_args("gh-prod", "--credential-file", "cred.txt"))
    assert code == 2
    for hint in ("IGRIS_MASTER_KEY", "IGRIS_MASTER_KEY_FILE", "igris-mw serve"):
        assert hint in err
    assert err.count("\n") == 1
    # Reading needs no key; every change does, for its audit event is MACed under it.
    assert run("connections", "list")[0] == 0
    code, _, err = run(*create_args("open-one", "--auth-type", "none"))
    assert code == 2
    assert "IGRIS_MASTER_KEY" in err
    assert run("connections", "list", "--json")[0] == 0


def test_default_key_file_is_used(home: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without key variables, <data dir>/master.key (what serve creates) is the master key."""
    monkeypatch.delenv("IGRIS_MASTER_KEY")
    key_file = home / "home" / "master.key"
    keyring = Keyring.generate_key_file(key_file)
    assert run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))["slug"] == "gh-prod"
    assert open_credential(default_url(home), "gh-prod", keyring) == CRED.encode()
    assert cli.crypto_environ({"IGRIS_HOME": str(home / "home")})["IGRIS_MASTER_KEY_FILE"] == str(
        key_file
    )


def test_store_option_and_environment(
    home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--store wins over IGRIS_STORE, which wins over the data directory default."""
    other = home / "other.db"
    env_db = home / "env.db"
    monkeypatch.setenv("IGRIS_STORE", f"sqlite:///{env_db}")
    run.json(*create_args("in-env", "--auth-type", "none"))
    run.json(*create_args("in-opt", "--auth-type", "none", "--store", f"sqlite:///{other}"))
    assert not db_path(home).exists()
    assert [c["slug"] for c in run.json("connections", "list")["data"]] == ["in-env"]
    got = run.json("connections", "list", "--store", f"sqlite:///{other}")
    assert [c["slug"] for c in got["data"]] == ["in-opt"]
    assert cli.default_store_url({"IGRIS_HOME": "/srv/igris"}) == "sqlite:////srv/igris/igris.db"


def test_usage_error_is_one_line(run: Run) -> None:
    """A usage error prints one line and exits 2; no command at all is one too."""
    for argv in ([], ["api-keys", "create", "--name", "x", "--scope", "root"]):
        code, out, err = run(*argv)
        assert code == 2
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith("igris-mw: error: ")


def test_installed_entry_point_exits_cleanly(home: Path) -> None:
    """The installed igris-mw script reports a user error in one line, with no traceback."""
    exe = Path(sys.executable).parent / "igris-mw"
    proc = subprocess.run(
        [str(exe), "connections", "show", "missing-one"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("igris-mw: error: ")
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [str(exe), "connections", "list", "--store", "bogus://x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_cli_start_does_not_import_the_gateway() -> None:
    """Building the parser imports neither aiohttp nor uvicorn (fast startup)."""
    code = (
        "import sys, igris_mw.cli as c; c.build_parser();"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'uvicorn'}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"


# -- crypto rewrap ----------------------------------------------------------


def test_crypto_rewrap_moves_credentials_to_the_new_master_key(
    home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a new master key is put first, `crypto rewrap` re-seals every credential under it."""
    assert run(*create_args("gh-prod", "--credential-file", "cred.txt"))[0] == 0
    assert run(*create_args("gh-two", "--credential-file", "cred2.txt"))[0] == 0
    monkeypatch.setenv("IGRIS_MASTER_KEY", FixedKeyring.environ("new", "test")["IGRIS_MASTER_KEY"])
    result = run.json("crypto", "rewrap")
    assert result["rewrapped"] == 2
    assert result["primaryKeyId"] == FixedKeyring("new").primary_key_id
    # the old key is no longer needed: the new one alone opens both
    only_new = FixedKeyring("new")
    assert open_credential(default_url(home), "gh-prod", only_new) == CRED.encode()
    assert open_credential(default_url(home), "gh-two", only_new) == CRED2.encode()
    assert run.json("crypto", "rewrap")["rewrapped"] == 0  # idempotent
    run.assert_no_credential()


def test_audit_option_sends_management_events_to_a_separate_sink(home: Path, run: Run) -> None:
    """--audit jsonl:///... keeps the trail in that file, not in the store."""
    sink = home / "audit.jsonl"
    code, _, err = run(
        *create_args("gh-prod", "--credential-file", "cred.txt"), "--audit", f"jsonl://{sink}"
    )
    assert code == 0, err
    lines = sink.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["action"] == "create"
    events = run.json("audit", "gh-prod", "--audit", f"jsonl://{sink}")
    assert [e["action"] for e in events["data"]] == ["create"]
    assert run.json("audit", "gh-prod")["data"] == []  # the store itself holds none
    assert CRED not in sink.read_text()


def test_master_key_file_readable_by_others_is_refused(
    home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file readable by group or others: one line naming it and `chmod 600`, exit 2."""
    key_file = home / "loose.key"
    Keyring.generate_key_file(key_file)
    key_file.chmod(0o640)
    monkeypatch.delenv("IGRIS_MASTER_KEY")
    monkeypatch.setenv("IGRIS_MASTER_KEY_FILE", str(key_file))
    assert run("connections", "list")[0] == 0  # needs no key; creates the store
    before = dump(home)
    code, out, err = run(*create_args("gh-prod", "--credential-file", "cred.txt"))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("igris-mw: error: ")
    assert str(key_file) in err
    assert "chmod 600" in err
    assert "Traceback" not in err
    assert dump(home) == before
    key_file.chmod(0o600)
    assert run(*create_args("gh-prod", "--credential-file", "cred.txt"))[0] == 0
    run.assert_no_credential()


def test_igris_audit_environment_is_the_cli_audit_sink(
    home: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IGRIS_AUDIT, like --audit, sends management events to that sink."""
    sink = home / "env-audit.jsonl"
    monkeypatch.setenv("IGRIS_AUDIT", f"jsonl://{sink}")
    assert run(*create_args("gh-prod", "--credential-file", "cred.txt"))[0] == 0
    assert [json.loads(line)["action"] for line in sink.read_text().splitlines()] == ["create"]


def test_audit_output_escapes_terminal_control_sequences(home: Path, run: Run) -> None:
    """ESC sequences in an event's user, path and metadata never reach the terminal raw."""
    from datetime import UTC, datetime

    from igris_mw.models import AuditEvent

    run.json(*create_args("gh-prod", "--credential-file", "cred.txt"))
    hostile = AuditEvent(
        id="evt_0000000000010000000000000001",
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        connection="gh-prod",
        user="\x1b]0;owned\x07alice",
        path="/v1/mcp/gh-prod/\x1b[2J\x1b[31m",
        metadata={"note": "\x1b[1;31mred\u202e"},
        method="GET",
        status=401,
        outcome="denied",
    )

    async def plant() -> None:
        # Straight into the store, as an event written before escaping existed.
        store = SQLiteStore(str(db_path(home)))
        await store.open()
        try:
            await store.append_audit_events([hostile])
        finally:
            await store.close()

    asyncio.run(plant())
    for argv in (("audit", "gh-prod"), ("audit", "gh-prod", "--json")):
        code, out, err = run(*argv)
        assert code == 0, err
        assert not {"\x1b", "\x07", "\u202e"} & set(out)
    code, out, _ = run("audit", "gh-prod")
    assert "\\x1b]0;owned\\x07alice" in out
    assert "\\x1b[2J" in out
    _, out, _ = run("audit", "gh-prod", "--json")
    assert json.loads(out)["data"][0]["metadata"] == {"note": "\x1b[1;31mred\u202e"}
