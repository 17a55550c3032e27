"""Contract, first part: the `igris-mw` command line, as a subprocess, beside a running serve."""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from contract_harness import Served, clean_env, igris_command, new_slug, serve


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A store of this module's own: its listings are walked whole."""
    home = tmp_path_factory.mktemp("contract-cli") / "home"
    with serve(home) as served:
        yield served


def _ok(p: subprocess.CompletedProcess[str]) -> Any:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def _user_error(p: subprocess.CompletedProcess[str]) -> None:
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr
    assert "Traceback" not in p.stdout
    assert p.stderr.strip(), p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr


def test_api_keys_create_json_prints_the_key_once(gw: Served) -> None:
    """api-keys create --json: an object whose `key` holds an ig_ key that the API accepts."""
    out = _ok(gw.cli("api-keys", "create", "--name", "cli-admin", "--scope", "admin", "--json"))
    assert out["key"].startswith("ig_")
    assert gw.api("GET", "/api/v1/virtual-keys", key=out["key"]).status_code == 200
    listed = gw.cli("api-keys", "list", "--json")
    assert listed.returncode == 0
    assert out["key"] not in listed.stdout


def test_api_keys_create_plain_prints_the_key(gw: Served) -> None:
    """Without --json the key is printed (once) too."""
    p = gw.cli("api-keys", "create", "--name", "plain", "--scope", "mcp")
    assert p.returncode == 0
    assert "ig_" in p.stdout


def test_connections_create_reads_the_credential_from_stdin(gw: Served) -> None:
    """connections create takes the credential on stdin; the API then shows the connection."""
    slug = new_slug("cli")
    p = gw.cli(
        "connections",
        "create",
        "--slug",
        slug,
        "--name",
        "CLI",
        "--upstream-url",
        "https://mcp.example.com/mcp",
        "--json",
        stdin="stdin-canary-81kz\n",
    )
    out = _ok(p)
    assert out["slug"] == slug
    assert "stdin-canary-81kz" not in p.stdout + p.stderr
    r = gw.api("GET", f"/api/v1/virtual-keys/{slug}")
    assert r.status_code == 200
    assert r.json()["authType"] == "bearer"


def test_connections_lifecycle_with_credential_file(gw: Served, tmp_path: Path) -> None:
    """create --credential-file, show, list, rotate, disable, enable, delete, each with --json."""
    cred = tmp_path / "cred.txt"
    cred.write_text("file-canary-7Qa\n")
    slug = new_slug("cli")
    created = _ok(
        gw.cli(
            "connections",
            "create",
            "--slug",
            slug,
            "--name",
            "F",
            "--upstream-url",
            "https://mcp.example.com/mcp",
            "--auth-type",
            "header",
            "--header-name",
            "X-Key",
            "--credential-file",
            str(cred),
            "--json",
        )
    )
    assert created["authType"] == "header"
    assert created["headerName"] == "X-Key"
    shown = _ok(gw.cli("connections", "show", slug, "--json"))
    assert shown["slug"] == slug
    assert "file-canary-7Qa" not in json.dumps(shown)
    listed = _ok(gw.cli("connections", "list", "--json"))
    items = listed["data"] if isinstance(listed, dict) else listed
    assert slug in [c["slug"] for c in items]
    cred.write_text("file-canary-new\n")
    rotated = _ok(gw.cli("connections", "rotate", slug, "--credential-file", str(cred), "--json"))
    assert rotated["credentialVersion"] == created["credentialVersion"] + 1
    assert _ok(gw.cli("connections", "disable", slug, "--json"))["enabled"] is False
    assert gw.api("GET", f"/api/v1/virtual-keys/{slug}").json()["enabled"] is False
    assert _ok(gw.cli("connections", "enable", slug, "--json"))["enabled"] is True
    p = gw.cli("connections", "delete", slug, "--json")
    assert p.returncode == 0, p.stderr
    assert gw.api("GET", f"/api/v1/virtual-keys/{slug}").status_code == 404


def test_connections_create_auth_type_none_needs_no_credential(gw: Served) -> None:
    """--auth-type none creates without reading a credential."""
    slug = new_slug("cli")
    out = _ok(
        gw.cli(
            "connections",
            "create",
            "--slug",
            slug,
            "--name",
            "N",
            "--upstream-url",
            "https://mcp.example.com/mcp",
            "--auth-type",
            "none",
            "--json",
            stdin="",
        )
    )
    assert out["authType"] == "none"


def test_credential_is_never_an_argument(gw: Served) -> None:
    """There is no --credential option: a user error, no traceback."""
    _user_error(
        gw.cli(
            "connections",
            "create",
            "--slug",
            new_slug(),
            "--name",
            "x",
            "--upstream-url",
            "https://a.example/",
            "--credential",
            "secret",
        )
    )


@pytest.mark.parametrize(
    "args",
    [
        ("connections", "show", "no-such-slug"),
        ("connections", "delete", "no-such-slug"),
        ("connections", "disable", "no-such-slug"),
        (
            "connections",
            "create",
            "--slug",
            "AB",
            "--name",
            "x",
            "--upstream-url",
            "https://a.example/",
        ),
        ("connections", "create", "--slug", "okslug", "--name", "x", "--upstream-url", "ftp://a"),
        ("api-keys", "revoke", "no-such-id"),
        ("api-keys", "create", "--name", "x", "--scope", "root"),
        ("audit", "no-such-slug"),
    ],
)
def test_user_errors_are_one_line_and_nonzero(gw: Served, args: tuple[str, ...]) -> None:
    """A user error prints one line to stderr, exits non-zero, no traceback."""
    _user_error(gw.cli(*args, stdin="cred\n"))


def test_slug_taken_is_a_user_error(gw: Served) -> None:
    """Creating a taken slug from the CLI is one line on stderr."""
    c = gw.create_connection(None)
    _user_error(
        gw.cli(
            "connections",
            "create",
            "--slug",
            c["slug"],
            "--name",
            "x",
            "--upstream-url",
            "https://a.example/",
            stdin="c\n",
        )
    )


def test_api_keys_list_and_revoke(gw: Served) -> None:
    """api-keys list --json shows the key's id; revoke makes the key refused at once."""
    out = _ok(gw.cli("api-keys", "create", "--name", "rv", "--scope", "admin", "--json"))
    listed = _ok(gw.cli("api-keys", "list", "--json"))
    items = listed["data"] if isinstance(listed, dict) else listed
    assert out["id"] in [k["id"] for k in items]
    assert gw.cli("api-keys", "revoke", out["id"]).returncode == 0
    assert gw.api("GET", "/api/v1/virtual-keys", key=out["key"]).status_code == 401


def test_api_keys_create_mcp_with_connections(gw: Served) -> None:
    """--scope mcp --connection SLUG (repeatable) limits the key."""
    a, b = gw.create_connection(None), gw.create_connection(None)
    out = _ok(
        gw.cli(
            "api-keys",
            "create",
            "--name",
            "lim",
            "--scope",
            "mcp",
            "--connection",
            a["slug"],
            "--connection",
            b["slug"],
            "--json",
        )
    )
    assert sorted(out["connections"]) == sorted([a["slug"], b["slug"]])
    assert out["scopes"] == ["mcp"]


def test_audit_slug_and_verify(gw: Served) -> None:
    """audit SLUG --json lists the trail; audit verify [SLUG] succeeds on an intact chain."""
    c = gw.create_connection(None)
    gw.api("POST", f"/api/v1/virtual-keys/{c['slug']}/disable")
    out = _ok(gw.cli("audit", c["slug"], "--json"))
    items = out["data"] if isinstance(out, dict) else out
    assert len(items) >= 2
    assert all(e["connection"] == c["slug"] for e in items)
    assert gw.cli("audit", "verify").returncode == 0
    assert gw.cli("audit", "verify", c["slug"]).returncode == 0
    assert gw.cli("audit", "verify", "--json").returncode == 0


def test_store_option_and_igris_store_env(tmp_path: Path) -> None:
    """--store URL and IGRIS_STORE pick the store; IGRIS_MASTER_KEY is a base64 32-byte key."""
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    env = clean_env(tmp_path / "home", {"IGRIS_MASTER_KEY": master})
    db = tmp_path / "other.db"
    run = [*igris_command(), "api-keys", "create", "--name", "a", "--scope", "admin", "--json"]
    p = subprocess.run(
        [*run, "--store", f"sqlite:///{db}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert db.exists()
    listed = subprocess.run(
        [*igris_command(), "api-keys", "list", "--json"],
        env={**env, "IGRIS_STORE": f"sqlite:///{db}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0
    assert json.loads(p.stdout)["id"] in listed.stdout
    assert not (tmp_path / "home" / "igris.db").exists()


def test_master_key_file_env(tmp_path: Path) -> None:
    """IGRIS_MASTER_KEY_FILE names the master key file used to seal credentials."""
    key_file = tmp_path / "mk"
    key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    key_file.chmod(0o600)
    env = clean_env(tmp_path / "home", {"IGRIS_MASTER_KEY_FILE": str(key_file)})
    p = subprocess.run(
        [
            *igris_command(),
            "connections",
            "create",
            "--slug",
            "mkf",
            "--name",
            "x",
            "--upstream-url",
            "https://a.example/",
            "--json",
        ],
        env=env,
        input="c\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "home" / "master.key").exists()


def test_serve_help_lists_first_part_options() -> None:
    """serve takes --host --port --store --upstream-timeout."""
    p = subprocess.run(
        [*igris_command(), "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for flag in ("--host", "--port", "--store", "--upstream-timeout"):
        assert flag in p.stdout


def test_every_command_prints_json_with_json(gw: Served) -> None:
    """--json makes delete, revoke and audit verify print JSON too."""
    c = gw.create_connection(None)
    out = _ok(gw.cli("api-keys", "create", "--name", "j", "--scope", "mcp", "--json"))
    for args in (
        ("audit", "verify", "--json"),
        ("audit", "verify", c["slug"], "--json"),
        ("api-keys", "revoke", out["id"], "--json"),
        ("connections", "delete", c["slug"], "--json"),
    ):
        p = gw.cli(*args)
        assert p.returncode == 0, (args, p.stderr)
        json.loads(p.stdout)


@pytest.mark.parametrize("all_chains", [False, True])
def test_audit_follow_prints_new_events(gw: Served, all_chains: bool) -> None:
    """audit [SLUG] --follow keeps printing events made after it started."""
    import selectors
    import time

    c = gw.create_connection(None)
    target = [] if all_chains else [c["slug"]]
    with subprocess.Popen(
        [*igris_command(), "audit", *target, "--follow", "--json"],
        env=gw.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            time.sleep(2.0)
            gw.api("POST", f"/api/v1/virtual-keys/{c['slug']}/disable")
            deadline = time.monotonic() + 10
            seen = ""
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                while time.monotonic() < deadline and "disable" not in seen:
                    if sel.select(0.2):
                        seen += proc.stdout.readline()
            assert "disable" in seen, seen
        finally:
            proc.terminate()
            proc.wait(10)


def test_stdin_credential_is_injected_without_its_newline(gw: Served, scripted: Any) -> None:
    """A credential read from stdin ("tok\\n") reaches the upstream as "Bearer tok"."""
    import httpx

    slug = new_slug("cli")
    _ok(
        gw.cli(
            "connections",
            "create",
            "--slug",
            slug,
            "--name",
            "S",
            "--upstream-url",
            scripted.base_url + "/echo",
            "--json",
            stdin="stdin-tok-42\n",
        )
    )
    r = httpx.post(f"{gw.url}/v1/mcp/{slug}", headers=gw.h(), json={"jsonrpc": "2.0"})
    assert r.status_code == 200, r.text
    assert r.json()["headers"]["authorization"] == "Bearer stdin-tok-42"


def test_master_key_rotation_newest_first(
    tmp_path_factory: pytest.TempPathFactory, scripted: Any
) -> None:
    """IGRIS_MASTER_KEY="new,old": a credential sealed under the old key is still injected."""
    import httpx

    old = base64.b64encode(secrets.token_bytes(32)).decode()
    new = base64.b64encode(secrets.token_bytes(32)).decode()
    home = tmp_path_factory.mktemp("contract-mk") / "home"
    env = clean_env(home, {"IGRIS_MASTER_KEY": old})
    p = subprocess.run(
        [
            *igris_command(),
            "connections",
            "create",
            "--slug",
            "mk-old",
            "--name",
            "x",
            "--upstream-url",
            scripted.base_url + "/echo",
        ],
        env=env,
        input="old-sealed-cred\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    admin = _ok(
        subprocess.run(
            [*igris_command(), "api-keys", "create", "--name", "a", "--scope", "admin", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    )["key"]
    with serve(home, env={"IGRIS_MASTER_KEY": f"{new},{old}"}, admin=admin) as s:
        r = httpx.post(f"{s.url}/v1/mcp/mk-old", headers=s.h(), json={"jsonrpc": "2.0"})
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["authorization"] == "Bearer old-sealed-cred"


def test_serve_store_option_and_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """serve --store URL uses that store; IGRIS_STORE sets the default for serve too."""
    home = tmp_path_factory.mktemp("contract-store") / "home"
    db = home.parent / "chosen.db"
    with serve(home, "--store", f"sqlite:///{db}") as s:
        s.create_connection(None)
    assert db.exists()
    assert not (home / "igris.db").exists()
    home2 = tmp_path_factory.mktemp("contract-store-env") / "home"
    db2 = home2.parent / "from-env.db"
    with serve(home2, env={"IGRIS_STORE": f"sqlite:///{db2}"}) as s:
        s.create_connection(None)
    assert db2.exists()
    assert not (home2 / "igris.db").exists()


@pytest.fixture(scope="module")
def ready_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A data directory past its first start (a master key and an admin key exist)."""
    home = tmp_path_factory.mktemp("contract-ready-home") / "home"
    env = clean_env(home, {"IGRIS_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()})
    p = subprocess.run(
        [*igris_command(), "api-keys", "create", "--name", "a", "--scope", "admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    return env


@pytest.mark.parametrize(
    "args",
    [
        ("--max-stale", "abc"),
        ("--max-request-body", "-1"),
        ("--max-request-body", "0"),
        ("--stream-idle-timeout", "0"),
        ("--auth-failures-per-minute", "0"),
        ("--metrics-port", "99999"),
        ("--log-format", "xml"),
        ("--allow-upstream-network", "not-a-cidr"),
        ("--upstream-timeout", "-5"),
        ("--shutdown-timeout", "x"),
        ("--rate-limit-store", "ftp://nowhere"),
        ("--upstream-ca-file", "/no/such/ca.pem"),
        ("--upstream-proxy", "not a url"),
        ("--store", "nosuch://x"),
        ("--port", "70000"),
    ],
)
def test_bad_serve_option_is_one_line(ready_env: dict[str, str], args: tuple[str, ...]) -> None:
    """A bad serve option value: non-zero exit, one line on stderr, no traceback."""
    from contract_harness import free_port

    p = subprocess.run(
        [*igris_command(), "serve", "--port", str(free_port()), *args],
        env=ready_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _user_error(p)


@pytest.mark.parametrize(
    "env",
    [
        {"IGRIS_MAX_STALE": "abc"},
        {"IGRIS_MAX_REQUEST_BODY": "lots"},
        {"IGRIS_ALLOW_UPSTREAM_NETWORKS": "10.0.0.0/33"},
        {"IGRIS_UPSTREAM_TIMEOUT": "soon"},
        {"IGRIS_AUTH_FAILURES_PER_MINUTE": "-3"},
        {"IGRIS_MASTER_KEY": "too-short"},
    ],
)
def test_bad_environment_is_one_line(ready_env: dict[str, str], env: dict[str, str]) -> None:
    """A bad IGRIS_* value stops serve with one line naming it, no traceback."""
    from contract_harness import free_port

    p = subprocess.run(
        [*igris_command(), "serve", "--port", str(free_port())],
        env={**ready_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _user_error(p)
    assert next(iter(env)) in p.stderr
